"""Evaluate a checkpoint with the task's evaluator: mIoU (mmseg), box / mask mAP (mmdet), top-1
(mmpretrain); the config's ``default_scope`` decides. Prints the metrics on the last line.

    python tools/test.py CONFIG CHECKPOINT [--optimize] [--out results.pkl] [--show-dir DIR]
        [--cfg-options ...]
    bash tools/dist_test.sh CONFIG CHECKPOINT GPUS
"""
import argparse
import os.path as osp

import replk_mm  # noqa: F401  (first: safe checkpoint loading for everything below)
from mmengine.config import Config, DictAction
from mmengine.dist import is_main_process
from replk_mm.deploy import optimize_for_inference
from replk_mm.engine.cli import (ToolError, build_test_runner, format_metrics, load_config,
                                 run_tool)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Evaluate a checkpoint with MMEngine\'s Runner')
    parser.add_argument('config', help='config file (for a checkpoint converted by '
                        'tools/deploy.py: the *_deploy.py it wrote next to it)')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='folder for the logs (default: work_dirs/<config>)')
    parser.add_argument('--optimize', action='store_true',
                        help='evaluate the inference form (replk_mm.deploy.optimize_for_inference: '
                        'BNs folded, fused oneDNN convs; faster on CPUs, same results)')
    parser.add_argument('--out', help='dump the predictions to this pickle file')
    parser.add_argument('--show-dir', help='save images with the predictions drawn to this folder')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, e.g. test_dataloader.batch_size=4')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher (set by the dist_* / slurm_* scripts)')
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0)
    return parser.parse_args()


def enable_visualization(cfg: Config, show_dir: str) -> None:
    """Make the task's visualization hook draw every test image into ``show_dir``."""
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        raise ToolError('--show-dir needs default_hooks.visualization in the config')
    hook.update(draw=True, interval=1)
    scope = cfg.get('default_scope')
    if scope == 'mmdet':
        hook['test_out_dir'] = osp.abspath(show_dir)
    elif scope == 'mmpretrain':
        hook['out_dir'] = osp.abspath(show_dir)
    else:
        cfg.visualizer['save_dir'] = show_dir


def add_dump(cfg: Config, out: str) -> None:
    """Append a metric that pickles the predictions to ``out``."""
    if not out.endswith(('.pkl', '.pickle')):
        raise ToolError(f'--out {out}: the predictions are pickled; use a .pkl file name')
    dump = dict(type='DumpDetResults' if cfg.get('default_scope') == 'mmdet' else 'DumpResults',
                out_file_path=out)
    evaluator = cfg.test_evaluator
    cfg.test_evaluator = [*evaluator, dump] if isinstance(evaluator, list) else [evaluator, dump]


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    if args.show_dir:
        enable_visualization(cfg, args.show_dir)
    if args.out:
        add_dump(cfg, args.out)
    runner = build_test_runner(cfg, args.checkpoint)
    if args.optimize:
        optimize_for_inference(getattr(runner.model, 'module', runner.model))
    metrics = runner.test()
    if is_main_process():
        print(format_metrics(metrics))


if __name__ == '__main__':
    run_tool(main)
