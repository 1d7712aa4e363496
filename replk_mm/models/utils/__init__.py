"""Model utilities shared by the backbones: checkpoint key conversion, activation checkpointing."""
from .activation_checkpoint import checkpointed
from .ckpt_convert import KeyMapping, backbone_state_dict, load_pretrained

__all__ = ['checkpointed', 'KeyMapping', 'backbone_state_dict', 'load_pretrained']
