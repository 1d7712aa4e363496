# RepLKNet-31B, ImageNet-1K from scratch at 224 (the authors' recipe; 83.5 top-1 in the paper).
_base_ = [
    '../_base_/models/replknet-31B_in1k.py', '../_base_/datasets/imagenet_224.py',
    '../_base_/schedules/imagenet_adamw_300e.py', '../_base_/default_runtime.py'
]
