# UperNet + RepLKNet-31B (ImageNet-1K 224 weights), ADE20K 512x512, 160k iterations x 16 images
# (8 GPUs x 2). Paper: 49.9 mIoU single-scale.
_base_ = [
    './_base_/models/upernet_replknet.py', './_base_/datasets/ade20k.py',
    './_base_/schedules/seg_adamw_160k.py', './_base_/default_runtime.py'
]
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=dict(type='Pretrained',
                                checkpoint='checkpoints/RepLKNet-31B_ImageNet-1K_224.pth')))
