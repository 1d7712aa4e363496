"""Deployment: convert a trained model to its re-parameterized (deploy) form, and rewrite that
in memory into the inference form (:func:`optimize_for_inference`)."""
from ..models.layers.reparam import reparameterize_model
from .inference import optimize_for_inference
from .converter import (DeployResult, EquivalenceError, build_model, convert_checkpoint,
                        make_deploy_config)

__all__ = [
    'reparameterize_model', 'convert_checkpoint', 'DeployResult', 'EquivalenceError',
    'build_model', 'make_deploy_config', 'optimize_for_inference'
]
