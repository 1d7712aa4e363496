"""Inference on image files with a trained or deploy checkpoint (see :mod:`.inference`)."""
from .inference import ImageResult, Inferencer, find_images, inference_model, iter_inference

__all__ = ['ImageResult', 'Inferencer', 'find_images', 'inference_model', 'iter_inference']
