"""Deployment: convert a trained model to its re-parameterized (inference) form."""
from ..models.layers.reparam import reparameterize_model
from .converter import (DeployResult, EquivalenceError, build_model, convert_checkpoint,
                        make_deploy_config)

__all__ = [
    'reparameterize_model', 'convert_checkpoint', 'DeployResult', 'EquivalenceError',
    'build_model', 'make_deploy_config'
]
