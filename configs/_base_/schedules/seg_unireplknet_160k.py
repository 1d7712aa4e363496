# The UniRepLKNet authors' ADE20K schedule: AdamW 1e-4, weight decay 0.05 (none on norms and
# biases), layer-wise lr decay (the rate is each model's), 1500-iteration linear warm-up, then poly
# (power 1) decay, 160k iterations at 16 images each.
_base_ = ['./seg_adamw_160k.py']
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='replk_mm.LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=1.0, num_layers=12))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0., by_epoch=False, begin=1500, end=160000),
]
