# The UperNet schedule over 80k iterations (Cityscapes).
_base_ = ['./seg_adamw_160k.py']
max_iters = 80000
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=400),
    dict(type='PolyLR', power=1.0, eta_min=0., by_epoch=False, begin=400, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=8000)
default_hooks = dict(checkpoint=dict(interval=8000))
