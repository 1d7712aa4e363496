# fcos_replknet31b_fpn_2x_coco, re-parameterized backbone (deploy=True):
# evaluates checkpoints converted by tools/deploy.py.
_base_ = ['./fcos_replknet31b_fpn_2x_coco.py']
model = dict(backbone=dict(deploy=True, init_cfg=None))
