# The synthetic COCO-layout demo data, boxes only: demo_coco_instance.py without the masks.
_base_ = ['./demo_coco_instance.py']
val_evaluator = dict(metric='bbox')
test_evaluator = val_evaluator
train_pipeline = _base_.train_pipeline
train_pipeline[1].with_mask = False  # LoadAnnotations
test_pipeline = _base_.test_pipeline
test_pipeline[2].with_mask = False  # LoadAnnotations
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
