# UperNet + RepLKNet-31L (ImageNet-22K weights), ADE20K 640x640, 160k x 16, 800-iteration warm-up.
_base_ = ['./upernet_replknet31b-22k_ade20k-640.py']
model = dict(
    backbone=dict(
        arch='31L',
        init_cfg=dict(checkpoint='checkpoints/RepLKNet-31L_ImageNet-22K.pth')),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=800),
    dict(type='PolyLR', power=1.0, eta_min=0., by_epoch=False, begin=800, end=160000),
]
