# The authors' fine-tuning schedule (to 384, or from ImageNet-22K): AdamW 4e-4 at 1024 images per
# step, weight decay 1e-8 (none on norms and biases), layer-wise lr decay 0.7 (their commands'
# --layer_decay 0.7, over their 14 layer ids: replk_mm.engine.layer_decay), 1 warm-up epoch then
# cosine, 30 epochs, EMA.
_base_ = ['./imagenet_adamw_300e.py']
optim_wrapper = dict(
    constructor='replk_mm.LayerDecayOptimWrapperConstructor',
    optimizer=dict(lr=4e-4, weight_decay=1e-8),
    paramwise_cfg=dict(_delete_=True, decay_rate=0.7, num_layers=12))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=1, end=30),
]
train_cfg = dict(max_epochs=30)
auto_scale_lr = dict(base_batch_size=1024)
