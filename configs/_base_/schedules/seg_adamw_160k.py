# The official UperNet schedule: AdamW 2e-4, weight decay 0.05 except norms and biases, linear
# warm-up over 400 iterations then poly (power 1) decay, 160k iterations at 16 images each.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.))
max_iters = 160000
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=400),
    dict(type='PolyLR', power=1.0, eta_min=0., by_epoch=False, begin=400, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=16)
log_processor = dict(by_epoch=False)
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='replk_mm.AtomicCheckpointHook', by_epoch=False, interval=16000,
                    max_keep_ckpts=3, save_best='mIoU'),
    nonfinite_loss=dict(type='replk_mm.NonFiniteLossHook'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
