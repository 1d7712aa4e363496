# The synthetic ADE20K-layout demo data of tools/misc/make_demo_data.py (128x128 images). Its maps
# use 5 of the 150 ADE20K classes; naming them makes the dataset remap labels to 0..4.
_base_ = ['./ade20k.py']
data_root = 'data/demo/ade20k'
metainfo = dict(classes=('wall', 'floor', 'tree', 'person', 'car'))
crop_size = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
