# Cascade Mask R-CNN + UniRepLKNet-B (ImageNet-22K -> 1K weights), COCO 3x, 16 images per
# iteration: the authors' recipe (as for T: AdamW 1e-4, layer decay 0.8, checkpointing; drop path
# 0.6, EMA of the weights). README: 54.8 box AP / 47.4 mask AP.
_base_ = ['./cascade-mask-rcnn_unireplknet-t_fpn_3x_coco.py']
model = dict(
    backbone=dict(
        arch='B', drop_path_rate=0.6,
        init_cfg=dict(checkpoint='checkpoints/unireplknet_b_in22k_to_in1k_384_acc87.40.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
custom_hooks = [
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=1e-4, update_buffers=True,
         priority=49)
]
