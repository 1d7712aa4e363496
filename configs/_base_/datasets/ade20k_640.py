# ADE20K with 640x640 crops (the 22K-pretrained, 31L and XL settings): ade20k.py with the scales
# and the crop of 640.
_base_ = ['./ade20k.py']
crop_size = (640, 640)
img_scale = (2560, 640)
train_pipeline = _base_.train_pipeline
train_pipeline[2].scale = img_scale  # RandomResize
train_pipeline[3].crop_size = crop_size  # RandomCrop
test_pipeline = _base_.test_pipeline
test_pipeline[1].scale = img_scale  # Resize
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
