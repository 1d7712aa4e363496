"""Train a segmentor, detector or classifier from a config (mmseg, mmdet or mmpretrain: the
config's ``default_scope`` decides). MMEngine's Runner does the work.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--cfg-options k=v ...]
    bash tools/dist_train.sh CONFIG GPUS     # torchrun, --launcher pytorch
"""
import argparse

import replk_mm  # noqa: F401  (first: safe checkpoint loading for everything below)
import torch
from mmengine.config import DictAction
from replk_mm.engine.cli import (ToolError, build_runner, check_data_paths, check_pretrained,
                                 checked_state_dict, load_config, resolve_resume, run_tool)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model with MMEngine\'s Runner')
    parser.add_argument('config', help='config file')
    parser.add_argument('--work-dir', help='folder for logs and checkpoints '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', const='auto', metavar='CKPT',
                        help='resume from CKPT, or without CKPT from the newest intact '
                        'checkpoint in the work dir (damaged newer ones are set aside)')
    parser.add_argument('--amp', action='store_true', help='mixed-precision training (GPU)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, e.g. train_cfg.max_iters=1000')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher (set by the dist_* / slurm_* scripts)')
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    if args.amp:
        if not torch.cuda.is_available():
            raise ToolError('--amp needs a GPU (MMEngine\'s AmpOptimWrapper); drop --amp on CPU')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume:
        resolve_resume(cfg, args.resume)
    check_data_paths(cfg, ('train', 'val'))
    if not cfg.resume:
        check_pretrained(cfg)
    runner = build_runner(cfg)
    if cfg.load_from:
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        checked_state_dict(model, cfg.load_from)
    runner.train()


if __name__ == '__main__':
    run_tool(main)
