"""Model utilities: checkpoint key conversion shared by the backbones."""
from .ckpt_convert import KeyMapping, backbone_state_dict, load_pretrained

__all__ = ['KeyMapping', 'backbone_state_dict', 'load_pretrained']
