# The UniRepLKNet authors' ImageNet-1K schedule: AdamW 4e-3 at 4096 images per step, weight decay
# 0.05 except norms and biases, 20 warm-up epochs then cosine to 1e-6, 300 epochs, no EMA.
_base_ = ['./imagenet_adamw_300e.py']
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=20,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=20, end=300),
]
custom_hooks = []
auto_scale_lr = dict(base_batch_size=4096)
