# UperNet + RepLKNet-XL (MegData-73M weights), ADE20K 640x640, 160k x 16, 1500-iteration warm-up.
# XL was pre-trained with mean = std = 127.5 and normalises its output stages.
_base_ = ['./upernet_replknet31b-22k_ade20k-640.py']
model = dict(
    data_preprocessor=dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5]),
    backbone=dict(
        arch='XL',
        drop_path_rate=0.5,
        norm_intermediate_features=True,
        init_cfg=dict(checkpoint='checkpoints/RepLKNet-XL_MegData73M_pretrain.pth')),
    decode_head=dict(in_channels=[256, 512, 1024, 2048]),
    auxiliary_head=dict(in_channels=1024))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0., by_epoch=False, begin=1500, end=160000),
]
