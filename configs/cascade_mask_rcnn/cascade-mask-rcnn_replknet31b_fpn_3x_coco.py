# Cascade Mask R-CNN + RepLKNet-31B (ImageNet-1K weights), COCO 3x multi-scale, 16 images per
# iteration. Paper: 52.2 box AP / 45.2 mask AP.
_base_ = [
    '../_base_/models/cascade_mask_rcnn_replknet_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/det_adamw_3x.py', '../_base_/default_runtime.py'
]
model = dict(backbone=dict(init_cfg=dict(
    type='Pretrained', checkpoint='checkpoints/RepLKNet-31B_ImageNet-1K_224.pth')))
