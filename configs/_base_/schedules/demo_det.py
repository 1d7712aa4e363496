# A short CPU schedule for the detection demos: AdamW, warm-up then steps, one evaluation and one
# checkpoint at the end.
_base_ = ['./det_adamw_3x.py']
optim_wrapper = dict(optimizer=dict(lr=1e-3), clip_grad=dict(max_norm=35, norm_type=2))
max_epochs = 6
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=max_epochs, milestones=[5], gamma=0.1),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=max_epochs))
randomness = dict(seed=0)
