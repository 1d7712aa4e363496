"""tools/analysis_tools/benchmark_backbone.py --whole and profile_inference.py on the demo UperNet
at 64 x 64: the deploy and inference forms against ONNX Runtime and OpenVINO (test requirements)
on the exported graph, with the GEMM floor and the ratios to the faster peer; the profiles."""
import csv
import re
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join('configs', 'demo', 'upernet_replknet-demo_ade20k-demo.py')


def run_tool(script: str, *args: str) -> None:
    """``tools/analysis_tools/{script} CONFIG args`` in a fresh interpreter; it must exit 0."""
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'analysis_tools', script),
                           CONFIG, *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout


def test_whole_segmentor_against_the_onnx_runtimes(tmp_path):
    run_tool('benchmark_backbone.py', '--whole', '--shape', '64', '64', '--modes', 'forward',
             '--repeats', '2', '--warmup', '1', '--settle', '0', '--threads', '1', '--no-memory',
             '--out', str(tmp_path))
    with open(tmp_path / 'benchmark.csv') as f:
        rows = {r['variant']: r for r in csv.DictReader(f)}
    assert list(rows) == ['ours-deploy-auto', 'ours-inference', 'onnxruntime', 'openvino']
    times = {v: float(r['median_ms']) for v, r in rows.items()}
    assert all(t > 0 for t in times.values())
    faster_peer = min(times['onnxruntime'], times['openvino'])
    for variant, row in rows.items():
        assert abs(float(row['speedup_vs_best_peer']) - faster_peer / times[variant]) < 0.02
        assert float(row['floor_fraction']) > 0
    text = (tmp_path / 'benchmark.md').read_text()
    assert f'whole model of {CONFIG}' in text and '1 threads' in text
    # the floor: the deploy form's multiply-adds at the faster GEMM rate of the same run
    floor_note = next(line for line in text.splitlines() if 'G multiply-adds' in line)
    assert 'torch.mm' in floor_note and '1x1 conv channels_last' in floor_note


def test_profile_inference_tables(tmp_path):
    """tools/analysis_tools/profile_inference.py: the inference form's operators (fused oneDNN
    convs among them) and OpenVINO's layers, per forward; both sides' convs by shape; the time
    budget of one forward."""
    run_tool('profile_inference.py', '--shape', '64', '64', '--threads', '1', '--repeats', '1',
             '--out', str(tmp_path))
    text = (tmp_path / 'profile.md').read_text()
    ours, openvino, by_shape, budget = text.split('### ')[1:]
    assert ours.startswith('replk_mm') and '| mkldnn::_convolution_pointwise |' in ours
    alone = re.search(r'The (\d+) fused convs of one forward, each timed alone on its input '
                      r'\(median of 7 calls\): ([\d.]+) ms in all', ours)
    convs = re.search(r'\| mkldnn::_convolution_pointwise \| [\d.]+ \| \d+% \| (\d+) \|', ours)
    assert alone and convs and int(alone.group(1)) == int(convs.group(1)) > 0
    assert float(alone.group(2)) > 0
    assert openvino.startswith('OpenVINO') and '| Convolution (' in openvino
    rows = [r.split(' | ') for r in by_shape.splitlines() if r.startswith(('| dense', '| depth'))]
    kinds = {r[0][2:] for r in rows}
    assert kinds == {'dense', 'depth-wise'}  # the demo RepLKNet's large kernels are depth-wise
    calls = [re.fullmatch(r'[\d.]+ \((\d+)\)', r[c]) for r in rows for c in (3, 4)]
    assert all(calls)
    # every conv of ours found its shape on OpenVINO's side, most with the same count
    assert all(int(r[4].split('(')[1].rstrip(')')) > 0 for r in rows
               if int(r[3].split('(')[1].rstrip(')')) > 0 and r[0] == '| dense')
    assert sum(int(m.group(1)) for m in calls[0::2]) >= int(alone.group(1))
    # the budget of the profiled forwards: oneDNN's verbose log was read (its primitives ran and
    # took time), and the parts of our wall time add up to it
    parts = {r.split(' | ')[1].split(' (')[0]: float(r.split(' | ')[2].rstrip(' |'))
             for r in budget.splitlines() if r.startswith('| ours |')}
    assert list(parts) == ['wall time', 'oneDNN primitives executing', "the package's kernels",
                           'other operators', 'the rest: set-up of each oneDNN call, Python, '
                           'allocation, profiling']
    primitives = re.search(r'oneDNN primitives executing \((\d+) a forward', budget)
    assert primitives and int(primitives.group(1)) > 0
    assert 0 < parts['oneDNN primitives executing'] < parts['wall time']
    assert abs(parts['wall time'] - sum(list(parts.values())[1:])) < 0.3  # (rounded to 0.1 ms)
    assert '| OpenVINO | its layers (PERF_COUNT) |' in budget


def test_winograd_benchmark_table(tmp_path):
    """tools/analysis_tools/benchmark_winograd.py: both paths per shape, their errors against a
    float64 conv within float32 rounding, whether winograd_applies picks Winograd."""
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'analysis_tools', 'benchmark_winograd.py'),
         '--shapes', '16,8,9,7', '256,256,56,56', '--repeats', '1', '--threads', '1', '--out',
         str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout
    rows = [line.split(' | ') for line in (tmp_path / 'winograd.md').read_text().splitlines()
            if line.startswith('| (')]
    assert [r[0] for r in rows] == ['| (1, 16, 9, 7) -> 8', '| (1, 256, 56, 56) -> 256']
    assert [r[4] for r in rows] == ['no', 'yes']
    for r in rows:
        assert float(r[1]) > 0 and float(r[2]) > 0
        assert float(r[5]) < 1e-5 and float(r[6].rstrip(' |')) < 1e-5
