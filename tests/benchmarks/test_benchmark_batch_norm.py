"""tools/analysis_tools/benchmark_batch_norm.py on a small input: every BN input shape of the
backbone is found with the activation fused into it and timed, and the tables are written."""
import csv
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'analysis_tools', 'benchmark_batch_norm.py')


def test_benchmark_batch_norm_writes_tables(tmp_path):
    proc = subprocess.run([sys.executable, TOOL, '31B', '--batch', '2', '--shape', '64', '64',
                           '--repeats', '1', '--threads', '1', '--out', str(tmp_path)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout
    with open(tmp_path / 'batch_norm.csv') as f:
        rows = list(csv.DictReader(f))
    # 31B on 64x64: stem at 32x32, stages at 16, 8, 4, 2; the FFN hidden maps have 4x the channels
    shapes = {r['shape'] for r in rows}
    assert {'2x128x32x32', '2x128x16x16', '2x512x16x16', '2x1024x2x2', '2x4096x2x2'} <= shapes
    calls = sum(int(r['calls']) for r in rows)
    assert calls == 203  # every BN of the 31B backbone with its output norm: one call each
    by_activation = {a: sum(int(r['calls']) for r in rows if r['activation'] == a)
                     for a in ('none', 'relu', 'gelu')}
    # 31B: 24 blocks, each with a GELU after its FFN's first BN; ReLUs after the stem's and the
    # transitions' ConvBNs and the blocks' pw1
    assert by_activation == {'none': 203 - 34 - 24, 'relu': 34, 'gelu': 24}
    assert all(float(r['ours_forward']) > 0 and float(r['torch_backward']) > 0 for r in rows)
    text = (tmp_path / 'batch_norm.md').read_text()
    assert 'Whole step (each shape times its calls): forward' in text
    assert not list(tmp_path.glob('*.tmp*'))
