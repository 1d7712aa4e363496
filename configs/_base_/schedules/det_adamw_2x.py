# The official FCOS 2x schedule: AdamW 2e-4, weight decay 0.05 except norms, gradients clipped at
# norm 35, constant 1/3 warm-up over 500 iterations, 24 epochs with steps at 16 and 22.
_base_ = ['./det_adamw_3x.py']
optim_wrapper = dict(optimizer=dict(lr=2e-4), clip_grad=dict(max_norm=35, norm_type=2))
max_epochs = 24
param_scheduler = [
    dict(type='ConstantLR', factor=1.0 / 3, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=max_epochs, milestones=[16, 22],
         gamma=0.1),
]
train_cfg = dict(max_epochs=max_epochs)
