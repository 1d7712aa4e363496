# cascade-mask-rcnn_unireplknet-s_fpn_3x_coco, re-parameterized backbone (deploy=True):
# evaluates checkpoints converted by tools/deploy.py.
_base_ = ['./cascade-mask-rcnn_unireplknet-s_fpn_3x_coco.py']
model = dict(backbone=dict(deploy=True, init_cfg=None))
