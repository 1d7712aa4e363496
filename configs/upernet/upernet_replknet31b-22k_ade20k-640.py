# UperNet + RepLKNet-31B (ImageNet-22K weights), ADE20K 640x640, 160k x 16, sliding-window test.
_base_ = [
    '../_base_/models/upernet_replknet.py', '../_base_/datasets/ade20k_640.py',
    '../_base_/schedules/seg_adamw_160k.py', '../_base_/default_runtime.py'
]
crop_size = (640, 640)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/RepLKNet-31B_ImageNet-22K.pth')),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(426, 426)))
