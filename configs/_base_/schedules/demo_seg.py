# A short CPU schedule for the segmentation demo: AdamW, warm-up then poly decay, one evaluation
# and one checkpoint at the end.
_base_ = ['./seg_adamw_160k.py']
optim_wrapper = dict(optimizer=dict(lr=1e-3))
max_iters = 300
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', power=1.0, eta_min=0., by_epoch=False, begin=30, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1, save_best=None))
randomness = dict(seed=0)
