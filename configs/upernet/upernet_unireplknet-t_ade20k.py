# UperNet + UniRepLKNet-T (ImageNet-1K weights), ADE20K 512x512, 160k x 16: the authors' recipe
# (AdamW 1e-4, no layer decay, 1500-iteration warm-up, drop path 0.2).
_base_ = ['../upernet_replknet31b_ade20k.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='replk_mm.UniRepLKNet',
        arch='T',
        drop_path_rate=0.2,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        init_cfg=dict(type='Pretrained',
                      checkpoint='checkpoints/unireplknet_t_in1k_224_acc83.21.pth')),
    decode_head=dict(in_channels=[80, 160, 320, 640]),
    auxiliary_head=dict(in_channels=320))
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='replk_mm.LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=1.0, num_layers=9))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0., by_epoch=False, begin=1500, end=160000),
]
