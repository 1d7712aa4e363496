"""Deployment: convert a trained model to its re-parameterized (inference) form."""
from ..models.layers.reparam import reparameterize_model

__all__ = ['reparameterize_model']
