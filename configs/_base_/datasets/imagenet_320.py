# ImageNet-1K at 320 (RepLKNet-XL): imagenet_384.py at 320; 16 images per GPU.
_base_ = ['./imagenet_384.py']
img_size = 320
train_pipeline = _base_.train_pipeline
train_pipeline[1].scale = img_size  # RandomResizedCrop
test_pipeline = _base_.test_pipeline
test_pipeline[1].scale = (img_size, img_size)  # Resize
train_dataloader = dict(batch_size=16, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=16, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
