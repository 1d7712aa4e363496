# FCOS + RepLKNet-31B (ImageNet-1K weights), COCO 2x multi-scale, gradients clipped at 35,
# 16 images per iteration. Paper: 47.0 box AP.
_base_ = [
    '../_base_/models/fcos_replknet_fpn.py', '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/det_adamw_2x.py', '../_base_/default_runtime.py'
]
model = dict(backbone=dict(init_cfg=dict(
    type='Pretrained', checkpoint='checkpoints/RepLKNet-31B_ImageNet-1K_224.pth')))
