# upernet_replknet31b-22k_ade20k-640, re-parameterized backbone (deploy=True):
# evaluates checkpoints converted by tools/deploy.py.
_base_ = ['./upernet_replknet31b-22k_ade20k-640.py']
model = dict(backbone=dict(deploy=True, init_cfg=None))
