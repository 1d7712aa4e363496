"""tools/analysis_tools/benchmark_downstream.py on the demo list (configs/benchmarks/demo.py).

The demo checkpoints are fixtures: each demo model built with its config's initialization and
saved where `make demo` writes it, in a work folder holding a small copy of the demo data. The
benchmark's metrics must equal what tools/test.py prints for the same checkpoints."""
import csv
import importlib.util
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'analysis_tools', 'benchmark_downstream.py')
DEMO_LIST = osp.join(ROOT, 'configs', 'benchmarks', 'demo.py')
OFFICIAL_LIST = osp.join(ROOT, 'configs', 'benchmarks', 'official.py')


def load_tool():
    spec = importlib.util.spec_from_file_location('benchmark_downstream', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(cmd, cwd):
    return subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False)


def save_init_checkpoint(config: str, path: str) -> None:
    """The demo model of ``config`` with its initialization, saved like a Runner checkpoint. The
    classification biases are zeroed: with their prior-probability initialization an untrained
    detector keeps no box, and an empty result has no metrics to compare."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    for name, param in model.named_parameters():
        if name.endswith('conv_cls.bias'):
            param.data.zero_()
    os.makedirs(osp.dirname(path), exist_ok=True)
    torch.save(dict(meta=dict(iter=0), state_dict=model.state_dict()), path)


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    """A folder with tiny demo data and the demo checkpoints, benchmarked once."""
    work = str(tmp_path_factory.mktemp('bench'))
    made = run([sys.executable, osp.join(ROOT, 'tools', 'misc', 'make_demo_data.py'),
                '--out', 'data/demo', '--num-train', '2', '--num-val', '2'], work)
    assert made.returncode == 0, made.stdout
    tool = load_tool()
    entries = tool.load_entries(DEMO_LIST)
    for entry in entries:
        save_init_checkpoint(osp.join(ROOT, entry['config']), osp.join(work, entry['checkpoint']))
    cmd = [sys.executable, TOOL, DEMO_LIST, '--out-dir', 'out', '--warmup', '0', '--iters', '1',
           '--optimize']
    proc = run(cmd, work)
    return dict(work=work, entries=entries, proc=proc, cmd=cmd, out=osp.join(work, 'out'))


def read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_demo_list_writes_table_csv_plot(demo_run):
    proc = demo_run['proc']
    assert proc.returncode == 0, proc.stdout[-3000:]
    out = demo_run['out']
    rows = read_csv(osp.join(out, 'benchmark.csv'))
    names = [e['name'] for e in demo_run['entries']]
    assert [(r['name'], r['form']) for r in rows] == [(n, f) for n in names
                                                      for f in ('training', 'deploy', 'inference')]
    for row in rows:
        assert row['source'] == 'measured' and not row['error']
        assert int(row['params']) > 0 and int(row['flops']) > 0
        assert float(row['images_per_s']) > 0
    for train, deploy, inference in zip(rows[::3], rows[1::3], rows[2::3]):
        # the fused form has fewer parameters and FLOPs and computes the same predictions
        assert int(deploy['params']) < int(train['params'])
        assert int(deploy['flops']) < int(train['flops'])
        # the inference form (BNs folded) scores what the deploy form scores
        metrics = [k for k in deploy if k.startswith(('coco/', 'aAcc', 'mIoU', 'mAcc'))]
        assert [inference[k] for k in metrics] == [deploy[k] for k in metrics]
        assert int(inference['params']) < int(deploy['params'])
    table = open(osp.join(out, 'benchmark.md')).read()
    assert all(f'| {n} | deploy | measured |' in table for n in names)
    with open(osp.join(out, 'benchmark.png'), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


# Runs tools/test.py once per argument list in one interpreter (the imports are paid once) and
# prints a marker before each run's output.
TEST_PY_RUNNER = r"""
import json, runpy, sys
script, runs = sys.argv[1], json.loads(sys.argv[2])
for i, argv in enumerate(runs):
    print(f'### run {i}', flush=True)
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name='__main__')
"""


def test_metrics_equal_test_py(demo_run):
    """The measured metrics of each demo checkpoint equal the metrics line tools/test.py prints
    for it; the deploy form reports the same metrics."""
    all_rows = read_csv(osp.join(demo_run['out'], 'benchmark.csv'))
    rows = [row for row in all_rows if row['form'] == 'training']
    for train, deploy in zip(rows, all_rows[1::3]):
        keys = [k for k in train if k.startswith(('coco/', 'aAcc', 'mIoU', 'mAcc'))]
        assert [deploy[k] != '' for k in keys] == [train[k] != '' for k in keys]
    configs = {e['name']: osp.join(ROOT, e['config']) for e in demo_run['entries']}
    runs = [[configs[row['name']], row['checkpoint'], '--work-dir', 'test_py'] for row in rows]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, '-c', TEST_PY_RUNNER, osp.join(ROOT, 'tools', 'test.py'),
                           json.dumps(runs)],
                          cwd=demo_run['work'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:]
    outputs = proc.stdout.split('### run ')[1:]
    assert len(outputs) == len(rows)
    for row, output in zip(rows, outputs):
        line = [ln for ln in output.splitlines() if ln.startswith('metrics: ')][-1]
        printed = dict(item.split('=') for item in line[len('metrics: '):].split())
        assert printed, line
        for key, value in printed.items():
            assert f'{float(row[key]):.4f}' == value, (row['name'], row['form'], key)


def test_resume_and_failing_entry(demo_run, tmp_path):
    """Measured entries come from the cache; a broken entry is reported, the others kept."""
    entry = demo_run['entries'][0]
    broken = dict(name='broken', config=entry['config'], checkpoint='work_dirs/missing.pth')
    listing = tmp_path / 'list.py'
    listing.write_text(f'benchmarks = [{entry!r}, {broken!r}]\n')
    out = tmp_path / 'out'
    shutil.copytree(demo_run['out'], out)
    proc = run([sys.executable, TOOL, str(listing), '--out-dir', str(out), '--warmup', '0',
                '--iters', '1', '--optimize'], demo_run['work'])
    assert proc.returncode == 1
    assert f'[{entry["name"]}] cached' in proc.stdout
    assert 'broken' in proc.stdout and 'missing.pth does not exist' in proc.stdout
    rows = read_csv(out / 'benchmark.csv')
    assert [r['name'] for r in rows] == [entry['name']] * 3 + ['broken']
    assert 'does not exist' in rows[-1]['error'] and not rows[0]['error']


def test_list_errors_name_the_fix(tmp_path):
    tool = load_tool()
    listing = tmp_path / 'bad.py'
    listing.write_text("benchmarks = [dict(name='a', config='x.py')]\n")
    with pytest.raises(tool.ToolError, match=r"lacks \['checkpoint'\]"):
        tool.load_entries(str(listing))
    listing.write_text("benchmarks = [dict(name='a', config='x', checkpoint='y'), "
                       "dict(name='a', config='x', checkpoint='y')]\n")
    with pytest.raises(tool.ToolError, match='unique'):
        tool.load_entries(str(listing))
    with pytest.raises(tool.ToolError, match='configs/benchmarks'):
        tool.load_entries(str(tmp_path / 'none.py'))


def test_parse_metrics_line():
    tool = load_tool()
    out = 'log\nmetrics: aAcc=81.2800 mIoU=30.7300\nmetrics: coco/bbox_mAP=0.1230 x=n/a\n'
    assert tool.parse_metrics_line(out) == {'coco/bbox_mAP': 0.123, 'x': 'n/a'}
    with pytest.raises(tool.ToolError, match='no metrics line'):
        tool.parse_metrics_line('Traceback ...\nRuntimeError: boom')


def test_official_list_is_complete():
    """Every official entry names an existing config, the authors' file and its paper figures."""
    tool = load_tool()
    entries = tool.load_entries(OFFICIAL_LIST)
    assert len(entries) >= 6
    zoo = open(osp.join(ROOT, 'docs', 'model_zoo.md')).read()
    for entry in entries:
        assert f'| {entry["name"]} |' in zoo, f'docs/model_zoo.md lacks {entry["name"]}'
        assert osp.isfile(osp.join(ROOT, entry['config'])), entry['config']
        assert entry['download'].endswith('.pth') and entry['checkpoint'].startswith('checkpoints/')
        assert entry['paper']['metrics'], entry['name']
        assert tool.task_of(osp.join(ROOT, entry['config'])) in tool.PRIMARY
        for word in entry['convert'].split():
            if word.startswith(('tools/', 'configs/')):
                assert osp.exists(osp.join(ROOT, word)), (entry['name'], word)


def test_paper_rows_in_outputs(tmp_path):
    """Paper rows are marked `paper`, plotted without latency and written atomically."""
    tool = load_tool()
    rows = [dict(name='m', task='segmentation', form='training', source='measured',
                 metrics={'mIoU': 40.0, 'aAcc': 80.0}, params=1e6, flops=2e9, latency_ms=5.0),
            tool.paper_row(dict(name='m', paper=dict(metrics={'mIoU': 49.9}, params=112e6,
                                                     flops=1170e9)), 'segmentation')]
    tool.write_outputs(str(tmp_path), rows, {}, 'cmd')
    table = (tmp_path / 'benchmark.md').read_text()
    assert '| m | training | paper | 49.9000 |' in table
    assert sorted(os.listdir(tmp_path)) == ['benchmark.csv', 'benchmark.md', 'benchmark.png',
                                            'results.json']
