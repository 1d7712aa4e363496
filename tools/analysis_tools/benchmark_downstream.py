"""Benchmark a list of downstream checkpoints: the task's metrics (mIoU / aAcc, box / mask AP,
top-1 / top-5, evaluated exactly as ``tools/test.py`` does), parameters, FLOPs, inference throughput
and peak memory, for the training form and the re-parameterized (deploy) form. Writes a markdown
table, a CSV and a plot (accuracy vs FLOPs and vs latency) into OUT_DIR.

    python tools/analysis_tools/benchmark_downstream.py LIST [--out-dir DIR] [--only NAME ...]
        [--force] [--checkpoint-root DIR] [--warmup 1] [--iters 5] [--cfg-options k=v ...]
        [--launcher pytorch --nproc N]

LIST is a Python (or YAML) file with ``benchmarks = [dict(name=..., config=..., checkpoint=...,
deploy=True, cfg_options=None, paper=None), ...]`` (see configs/benchmarks/). Finished entries are
cached in OUT_DIR/results.json and not measured again unless ``--force`` or their checkpoint
changed. A failing entry gets its error in its row, the others still run, and the exit status is 1.
"""
import argparse
import copy
import csv
import datetime
import io
import itertools
import json
import os
import os.path as osp
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

import replk_mm  # noqa: F401  (first: safe checkpoint loading for everything below)

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))  # get_flops.py, beside this script
from get_flops import count as count_params_flops  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from replk_mm.deploy import convert_checkpoint, optimize_for_inference  # noqa: E402
from replk_mm.deploy.atomic import atomic_outputs  # noqa: E402
from replk_mm.engine.cli import ToolError, build_test_runner, load_config  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TASKS = {'mmseg': 'segmentation', 'mmdet': 'detection', 'mmpretrain': 'classification'}
# The metric each task is plotted by, and its factor to percent.
PRIMARY = {'segmentation': ('mIoU', 1.0), 'detection': ('coco/bbox_mAP', 100.0),
           'classification': ('accuracy/top1', 1.0)}
ENTRY_KEYS = {'name', 'config', 'checkpoint', 'deploy', 'cfg_options', 'paper', 'download',
              'convert', 'note'}
Row = Dict[str, Any]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('list', help='benchmark list (.py or .yaml), e.g. configs/benchmarks/demo.py')
    parser.add_argument('--out-dir', help='output folder (default: work_dirs/benchmark_<list name>)')
    parser.add_argument('--only', nargs='+', metavar='NAME', help='measure only these entries')
    parser.add_argument('--force', action='store_true', help='measure cached entries again')
    parser.add_argument('--checkpoint-root', default='.',
                        help='folder relative checkpoint paths start from (default: current)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed batches per form')
    parser.add_argument('--iters', type=int, default=5, help='timed test batches per form')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='overrides for every entry\'s config (after the entry\'s own)')
    parser.add_argument('--launcher', choices=['none', 'pytorch'], default='none',
                        help='pytorch: evaluate with tools/dist_test.sh (torchrun, --nproc '
                        'processes); timing stays in this process')
    parser.add_argument('--nproc', type=int, default=1, help='processes for --launcher pytorch')
    parser.add_argument('--optimize', action='store_true',
                        help='also measure the inference form of the deploy checkpoint '
                        '(replk_mm.deploy.optimize_for_inference; tools/test.py --optimize)')
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.nproc < 1:
        parser.error('--iters and --nproc must be >= 1 and --warmup >= 0')
    return args


# ----------------------------------------------------------------------------- the list


def load_entries(path: str) -> List[dict]:
    """The ``benchmarks`` list of a Python / YAML file, each entry checked for its keys."""
    if not osp.isfile(path):
        raise ToolError(f'benchmark list {path} does not exist; the lists live in '
                        'configs/benchmarks/')
    entries = Config.fromfile(path).to_dict().get('benchmarks')
    if not isinstance(entries, list) or not entries:
        raise ToolError(f'{path} must define a non-empty list `benchmarks = [dict(name=..., '
                        'config=..., checkpoint=...), ...]`')
    names = set()
    for i, entry in enumerate(entries):
        missing = {'name', 'config', 'checkpoint'} - set(entry)
        unknown = set(entry) - ENTRY_KEYS
        if missing or unknown:
            raise ToolError(f'{path}: entry {i} ({entry.get("name", "unnamed")}) lacks '
                            f'{sorted(missing)} / has unknown keys {sorted(unknown)}; the keys '
                            f'are {sorted(ENTRY_KEYS)}')
        if entry['name'] in names:
            raise ToolError(f'{path}: two entries are named {entry["name"]!r}; names must be unique')
        names.add(entry['name'])
    return entries


def repo_path(path: str) -> str:
    """Config paths are relative to the repository root."""
    return path if osp.isabs(path) else osp.join(ROOT, path)


def fingerprint(entry: dict, checkpoint: str, args: argparse.Namespace) -> dict:
    """What a cached result depends on: the entry, the checkpoint file and the timing settings."""
    stat = os.stat(checkpoint) if osp.isfile(checkpoint) else None
    return dict(entry=json.dumps(entry, sort_keys=True, default=str), checkpoint=checkpoint,
                checkpoint_stat=[stat.st_size, stat.st_mtime_ns] if stat else None,
                cfg_options=json.dumps(args.cfg_options, sort_keys=True, default=str),
                warmup=args.warmup, iters=args.iters, optimize=args.optimize)


# ----------------------------------------------------------------------------- measuring


class PeakMemory:
    """Peak memory over a ``with`` block (warm-up and timed batches) above its level at entry: CUDA
    ``max_memory_allocated``; on the CPU the resident set sampled every 2 ms from /proc/self/statm
    (an approximation: the allocator may keep freed memory, so a second run can show less)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes: Optional[int] = None
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> Optional[int]:
        try:
            with open('/proc/self/statm') as f:
                return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
        except OSError:
            return None

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            rss = self._rss()
            if rss is not None:
                self._max = max(self._max, rss)

    def __enter__(self) -> 'PeakMemory':
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._max = self._rss()
            if self._base is not None:
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self._base is not None:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self._max, self._rss() or 0) - self._base


class TensorForward(nn.Module):
    """``model(inputs, data_samples, mode='tensor')`` as a one-input module, for FLOP counting."""

    def __init__(self, model: nn.Module, data_samples: Optional[list]) -> None:
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, inputs: torch.Tensor) -> Any:
        return self.model(inputs, self.data_samples, mode='tensor')


def test_batches(cfg: Config, n: int) -> List[dict]:
    """The first ``n`` batches of the test dataloader (repeated when it has fewer)."""
    loader = Runner.build_dataloader(copy.deepcopy(cfg.test_dataloader))
    batches = list(itertools.islice(loader, n))
    if not batches:
        raise ToolError('the test dataloader is empty')
    return [batches[i % len(batches)] for i in range(n)]


def measure_cost(model: nn.Module, batches: List[dict], warmup: int) -> Row:
    """Params, FLOPs of one test image, images/s and peak memory of ``model.test_step``."""
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        data = model.data_preprocessor(copy.deepcopy(batches[0]), False)
    samples = data.get('data_samples')
    shape = tuple(data['inputs'].shape[-2:])
    params, flops = count_params_flops(TensorForward(model, samples[:1] if samples else None),
                                       shape)
    timed = batches[warmup:]
    images = sum(len(b['inputs']) for b in timed)
    with torch.no_grad(), PeakMemory(device) as memory:
        for batch in batches[:warmup]:
            model.test_step(batch)
        start = time.perf_counter()
        for batch in timed:
            model.test_step(batch)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return dict(params=params, flops=flops, input=f'{shape[0]}x{shape[1]}',
                images_per_s=images / seconds, latency_ms=1000 * seconds / images,
                peak_mem_mib=None if memory.peak_bytes is None else memory.peak_bytes / 2**20,
                device=str(device) if device.type == 'cpu' else torch.cuda.get_device_name(device))


def parse_metrics_line(output: str) -> Dict[str, Any]:
    """The metrics of the last ``metrics: k=v ...`` line ``tools/test.py`` printed."""
    lines = [line for line in output.splitlines() if line.startswith('metrics: ')]
    if not lines:
        raise ToolError('tools/dist_test.sh printed no metrics line; its output ends with: ' +
                        ' | '.join(output.strip().splitlines()[-3:]))
    metrics = {}
    for item in lines[-1][len('metrics: '):].split():
        key, _, value = item.partition('=')
        try:
            metrics[key] = float(value)
        except ValueError:
            metrics[key] = value
    return metrics


def dist_evaluate(config: str, checkpoint: str, cfg_options: Optional[dict], work_dir: str,
                  nproc: int, optimize: bool = False) -> Dict[str, Any]:
    """Evaluate with ``tools/dist_test.sh`` (torchrun) and read the metrics it prints."""
    cmd = ['bash', osp.join(ROOT, 'tools', 'dist_test.sh'), config, checkpoint, str(nproc),
           '--work-dir', work_dir] + (['--optimize'] if optimize else [])
    if cfg_options:
        cmd += ['--cfg-options', *(f'{k}={v}' for k, v in cfg_options.items())]
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, check=False)
    if proc.returncode != 0:
        tail = ' | '.join(proc.stdout.strip().splitlines()[-3:])
        raise ToolError(f'tools/dist_test.sh exited with {proc.returncode}: {tail}')
    return parse_metrics_line(proc.stdout)


def measure_form(config: str, checkpoint: str, cfg_options: Optional[dict], work_dir: str,
                 args: argparse.Namespace, optimize: bool = False) -> Tuple[Row, Config]:
    """Metrics (tools/test.py's evaluation, with ``--optimize`` when ``optimize``) and cost of one
    (config, checkpoint) pair."""
    cfg = load_config(config, cfg_options, work_dir, 'none')
    runner = build_test_runner(cfg, checkpoint)
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    if optimize:
        optimize_for_inference(model)
    if args.launcher == 'pytorch':
        metrics = dist_evaluate(config, checkpoint, cfg_options, work_dir, args.nproc, optimize)
    else:
        metrics = runner.test()
    row = measure_cost(model, test_batches(cfg, args.warmup + args.iters), args.warmup)
    row['metrics'] = dict(metrics)
    return row, cfg


def measure_entry(entry: dict, checkpoint: str, out_dir: str, args: argparse.Namespace) -> List[Row]:
    """The measured rows of one entry: training form, then deploy form (and with ``--optimize`` its
    inference form)."""
    name = entry['name']
    config = repo_path(entry['config'])
    cfg_options = {**(entry.get('cfg_options') or {}), **(args.cfg_options or {})}
    if not osp.isfile(checkpoint):
        raise ToolError(f'checkpoint {checkpoint} does not exist ({entry.get("download") or "run `make demo` first"}); '
                        'pass --checkpoint-root if the files lie elsewhere')
    work_dir = osp.join(out_dir, 'work_dirs', name)
    base = dict(name=name, source='measured', checkpoint=checkpoint)
    row, cfg = measure_form(config, checkpoint, cfg_options, work_dir, args)
    task = TASKS.get(cfg.get('default_scope'), cfg.get('default_scope'))
    rows = [dict(base, task=task, form='training', **row)]
    deploy = entry.get('deploy', True)
    if not deploy:
        return rows
    try:  # a failing deploy form keeps the training row
        if deploy is True:
            shape = (1, 3, *map(int, row['input'].split('x')))
            result = convert_checkpoint(config, checkpoint, osp.join(out_dir, 'deploy', name),
                                        force=True, input_shape=shape, latency_runs=1,
                                        cfg_options=cfg_options or None)
            deploy = dict(config=result.config, checkpoint=result.checkpoint)
        deploy_ckpt = deploy['checkpoint']
        if not osp.isabs(deploy_ckpt):
            deploy_ckpt = osp.join(args.checkpoint_root, deploy_ckpt)
        forms = ['deploy', 'inference'] if args.optimize else ['deploy']
        for form in forms:
            row, _ = measure_form(repo_path(deploy['config']), deploy_ckpt, cfg_options,
                                  f'{work_dir}_{form}', args, optimize=form == 'inference')
            rows.append(dict(base, task=task, form=form, checkpoint=deploy_ckpt, **row))
    except Exception as err:
        if os.environ.get('REPLK_MM_TRACEBACK') == '1':
            raise
        rows.append(dict(base, task=task, form='deploy', metrics={}, error=one_line(err)))
    return rows


def one_line(err: BaseException) -> str:
    return ' '.join(f'{type(err).__name__}: {err}'.split())


def task_of(config: str) -> Optional[str]:
    """segmentation / detection / classification, from the config's ``default_scope``."""
    if not osp.isfile(config):
        return None
    scope = Config.fromfile(config).get('default_scope')
    return TASKS.get(scope, scope)


def paper_row(entry: dict, task: Optional[str]) -> Optional[Row]:
    """The authors' figures of an entry as a row (``source='paper'``)."""
    paper = entry.get('paper')
    if not paper:
        return None
    return dict(name=entry['name'], task=task, form=paper.get('form', 'training'),
                source='paper', metrics=dict(paper.get('metrics', {})), params=paper.get('params'),
                flops=paper.get('flops'), input=paper.get('input'),
                note=paper.get('note') or entry.get('note'))


# ----------------------------------------------------------------------------- outputs


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or value == '':
        return ''
    if isinstance(value, float):
        return f'{value:.{digits}f}'
    return str(value)


def metric_keys(rows: List[Row]) -> List[str]:
    keys: List[str] = []
    for row in rows:
        keys += [k for k in row.get('metrics', {}) if k not in keys]
    return keys


def table_cells(row: Row, keys: List[str]) -> List[str]:
    params, flops = row.get('params'), row.get('flops')
    return ([row['name'], row.get('form', ''), row['source']] +
            [_fmt(row.get('metrics', {}).get(k)) for k in keys] +
            ['' if params is None else f'{params / 1e6:.2f}',
             '' if flops is None else f'{flops / 1e9:.3f}', row.get('input') or '',
             _fmt(row.get('images_per_s'), 2), _fmt(row.get('latency_ms'), 1),
             _fmt(row.get('peak_mem_mib'), 1), row.get('device') or '',
             row.get('error') or row.get('note') or ''])


HEADER = ['params (M)', 'FLOPs (G)', 'input', 'images/s', 'latency (ms/img)', 'peak mem (MiB)',
          'device', 'error / note']


def write_markdown(path: str, rows: List[Row], command: str) -> None:
    lines = ['# Downstream benchmark', '',
             f'`{command}` ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)', '',
             '`measured`: evaluated here with tools/test.py\'s code path; `paper`: the authors\' '
             'figure. FLOPs: multiply-adds of one test image (its size in `input`). images/s and '
             'latency: `model.test_step` on test batches; peak mem: CUDA max allocated, on the CPU '
             'the rise of the resident set.', '']
    tasks = list(dict.fromkeys(row.get('task') or 'failed' for row in rows))
    for task in tasks:
        task_rows = [row for row in rows if (row.get('task') or 'failed') == task]
        keys = metric_keys(task_rows)
        header = ['name', 'form', 'source'] + keys + HEADER
        lines += [f'## {task}', '', '| ' + ' | '.join(header) + ' |',
                  '|' + '---|' * len(header)]
        lines += ['| ' + ' | '.join(c.replace('|', '/') for c in table_cells(r, keys)) + ' |'
                  for r in task_rows]
        lines.append('')
    with open(path, 'w') as f:
        f.write('\n'.join(lines))


CSV_FIELDS = ['name', 'task', 'form', 'source', 'params', 'flops', 'input', 'images_per_s',
              'latency_ms', 'peak_mem_mib', 'device', 'checkpoint', 'error', 'note']


def write_csv(path: str, rows: List[Row]) -> None:
    keys = metric_keys(rows)
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS[:4] + keys + CSV_FIELDS[4:])
        writer.writeheader()
        for row in rows:
            writer.writerow({**{k: row.get(k) for k in CSV_FIELDS}, **row.get('metrics', {})})


def write_plot(path: str, rows: List[Row]) -> None:
    """Accuracy (each task's primary metric, %) against FLOPs and against latency."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    markers = {'segmentation': 'o', 'detection': 's', 'classification': '^'}
    for row in rows:
        key, scale = PRIMARY.get(row.get('task'), (None, 1.0))
        value = row.get('metrics', {}).get(key)
        if not isinstance(value, (int, float)):
            continue
        style = dict(marker=markers.get(row['task'], 'o'), linestyle='none',
                     fillstyle='none' if row['source'] == 'paper' else 'full')
        label = f'{row["name"]} ({row.get("form")}, {row["source"]})'
        for ax, x in zip(axes, (row.get('flops'), row.get('latency_ms'))):
            if x is None:
                continue
            x = x / 1e9 if ax is axes[0] else x
            ax.plot([x], [value * scale], **style)
            ax.annotate(label, (x, value * scale), fontsize=6, xytext=(3, 3),
                        textcoords='offset points')
    axes[0].set_xlabel('GFLOPs (one test image)')
    axes[1].set_xlabel('latency (ms / image, measured here)')
    for ax in axes:
        ax.set_ylabel('mIoU / box AP / top-1 (%)')
        ax.grid(alpha=0.3)
    fig.suptitle('filled: measured here, hollow: paper; o segmentation, s detection, '
                 '^ classification', fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=120)
    plt.close(fig)
    with open(path, 'wb') as f:
        f.write(buffer.getvalue())


def write_outputs(out_dir: str, rows: List[Row], cache: dict, command: str) -> None:
    """results.json, benchmark.md, benchmark.csv and benchmark.png, all or nothing."""
    paths = [osp.join(out_dir, name) for name in
             ('results.json', 'benchmark.md', 'benchmark.csv', 'benchmark.png')]
    with atomic_outputs(paths, force=True) as (tmp_json, tmp_md, tmp_csv, tmp_png):
        with open(tmp_json, 'w') as f:
            json.dump(cache, f, indent=1, default=str)
        write_markdown(tmp_md, rows, command)
        write_csv(tmp_csv, rows)
        write_plot(tmp_png, rows)


# ----------------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    entries = load_entries(args.list)
    if args.only:
        unknown = set(args.only) - {e['name'] for e in entries}
        if unknown:
            raise ToolError(f'--only {sorted(unknown)}: no such entries in {args.list} '
                            f'(names: {", ".join(e["name"] for e in entries)})')
        entries = [e for e in entries if e['name'] in args.only]
    list_name = osp.splitext(osp.basename(args.list))[0]
    out_dir = osp.abspath(args.out_dir or osp.join('work_dirs', f'benchmark_{list_name}'))
    cache_path = osp.join(out_dir, 'results.json')
    cache: dict = {}
    if osp.isfile(cache_path):
        with open(cache_path) as f:
            cache = json.load(f)
    command = ' '.join(['python', osp.relpath(__file__, ROOT) if __file__.startswith(ROOT)
                        else __file__, *(argv if argv is not None else sys.argv[1:])])
    rows: List[Row] = []
    failed = []
    for entry in entries:
        name = entry['name']
        checkpoint = entry['checkpoint']
        if not osp.isabs(checkpoint):
            checkpoint = osp.join(args.checkpoint_root, checkpoint)
        stamp = fingerprint(entry, checkpoint, args)
        cached = cache.get(name)
        if cached and cached['fingerprint'] == stamp and not args.force:
            print(f'[{name}] cached in {cache_path} (--force measures it again)')
            measured = cached['rows']
        else:
            print(f'[{name}] measuring {entry["config"]} with {checkpoint}')
            try:
                measured = measure_entry(entry, checkpoint, out_dir, args)
            except Exception as err:  # one failing entry must not stop the others
                if os.environ.get('REPLK_MM_TRACEBACK') == '1':
                    raise
                measured = [dict(name=name, task=task_of(repo_path(entry['config'])),
                                 form='training', source='measured',
                                 metrics={}, checkpoint=checkpoint, error=one_line(err))]
            errors = [row['error'] for row in measured if row.get('error')]
            if errors:  # reported, and measured again next time
                print(f'[{name}] FAILED: {"; ".join(errors)}', file=sys.stderr)
                failed.append(name)
                cache.pop(name, None)
            else:
                cache[name] = dict(fingerprint=stamp, rows=measured)
        rows += measured
        paper = paper_row(entry, measured[0].get('task') or task_of(repo_path(entry['config'])))
        if paper:
            rows.append(paper)
    write_outputs(out_dir, rows, cache, command)
    print(f'wrote {osp.join(out_dir, "benchmark.md")}, benchmark.csv, benchmark.png')
    if failed:
        print(f'error: {len(failed)} entr{"y" if len(failed) == 1 else "ies"} failed: '
              f'{", ".join(failed)} (errors in the table)', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except ToolError as err:
        print('error: ' + ' '.join(str(err).split()), file=sys.stderr)
        sys.exit(1)
