# The UniRepLKNet authors' ImageNet-22K -> 1K fine-tuning: AdamW 5e-5 at 512 images per step,
# weight decay 1e-8, layer-wise lr decay 0.8, no warm-up, cosine to 1e-6, 30 epochs, no EMA.
_base_ = ['./imagenet_adamw_300e.py']
optim_wrapper = dict(
    constructor='LearningRateDecayOptimWrapperConstructor',
    optimizer=dict(lr=5e-5, weight_decay=1e-8),
    paramwise_cfg=dict(layer_decay_rate=0.8, norm_decay_mult=0., bias_decay_mult=0.))
param_scheduler = [dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=0, end=30)]
train_cfg = dict(max_epochs=30)
custom_hooks = []
auto_scale_lr = dict(base_batch_size=512)
