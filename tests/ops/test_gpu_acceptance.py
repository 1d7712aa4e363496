"""tools/analysis_tools/gpu_acceptance.py: the whole pipeline in emulation (CPU, tiny sizes, the CUDA
kernels compiled for the host) writes its report and CSV; without a GPU the real run stops with one
line."""
import csv
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, 'tools', 'analysis_tools', 'gpu_acceptance.py')


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the run on a machine without a GPU')
def test_without_a_gpu_it_stops_with_one_line(tmp_path):
    proc = run_tool('--out-dir', str(tmp_path / 'out'))
    assert proc.returncode == 2
    assert proc.stdout == ''
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: no CUDA GPU') and '--emulate' in lines[0]
    assert not (tmp_path / 'out').exists()


def test_emulated_pipeline_writes_report_and_csv(tmp_path):
    proc = run_tool('--out-dir', str(tmp_path), '--emulate')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (tmp_path / 'acceptance.md').read_text()
    for section in ('## Summary', '## Environment', '## Build of the extension', '## Tests',
                    '## compute-sanitizer', '## Nsight Compute counters', '## Seed Table 1', '### forward', '### forward_backward',
                    '## One layer at the headline size', '## RepLKNet-31B training step',
                    '## UperNet-31B training step'):
        assert section in report, section
    assert report.count('skipped in emulation') == 3  # the build, compute-sanitizer and ncu
    assert 'FAILED' not in report and 'Targets met: forward:' in report
    assert (tmp_path / 'tests.log').exists()

    with open(tmp_path / 'acceptance.csv') as f:
        rows = list(csv.DictReader(f))
    keys = {(r['step'], r['impl'], r['metric']) for r in rows}
    impls = ('pytorch_nchw', 'pytorch_channels_last', 'ours_nchw', 'ours_channels_last')
    for step in ('table1', 'headline'):
        for impl in impls:
            assert (step, impl, 'ms') in keys and (step, impl, 'roofline_pct') in keys
        assert (step, 'roofline', 'ms') in keys
    # every Table 1 case of the emulated sizes (2 resolutions x 2 kernels x 2 modes) x 4 candidates
    assert sum(r['step'] == 'table1' and r['metric'] == 'ms' and r['impl'] in impls for r in rows) == 32
    cases = {r['case'] for r in rows if r['step'] == 'headline' and r['metric'] == 'ms'}
    assert cases == {f'N=1 C=3 R=12 K=7 {dtype} {mode}' for dtype in ('float32', 'float16')
                     for mode in ('forward', 'forward_backward')}
    for step in ('replknet31b', 'upernet31b'):
        for model in ('ours', 'mmpretrain'):
            values = {r['metric']: float(r['value']) for r in rows if r['step'] == step and r['impl'] == model}
            assert values['median_ms'] > 0 and values['peak_mib'] > 0, (step, model, values)
    assert ('tests', '', 'passed') in keys
    assert {r['case'] for r in rows if r['metric'] == 'targets_met'} == {'fp32 forward', 'fp32 forward_backward'}
    assert all(float(r['value']) > 0 for r in rows if r['metric'] == 'ms')


def test_sanitizer_verdict_needs_the_case_to_finish():
    """The log echoes the command (the case's source, which names its last line) before the run:
    only the printed line itself and exit status 0 count as no error."""
    sys.path.insert(0, os.path.dirname(TOOL))
    from gpu_acceptance import SANITIZER_CASE, sanitizer_verdict
    echo = '$ compute-sanitizer --tool memcheck --error-exitcode 1 python -c ' + SANITIZER_CASE
    done = echo + '\nsanitizer case: done\n========= ERROR SUMMARY: 0 errors\n'
    crashed = echo + '\nTraceback (most recent call last):\n========= ERROR SUMMARY: 0 errors\n'
    assert sanitizer_verdict(0, done) == (True, ['sanitizer case: done', '========= ERROR SUMMARY: 0 errors'])
    assert not sanitizer_verdict(0, crashed)[0]
    assert not sanitizer_verdict(1, done)[0]


def test_ncu_details_csv_is_read_per_kernel():
    """`ncu --csv --page details` interleaves its rows with the program's output and its own
    ==PROF== lines; each kernel's metrics are kept, argument lists dropped from the names."""
    sys.path.insert(0, os.path.dirname(TOOL))
    from gpu_acceptance import NCU_CASE, parse_ncu_csv
    compile(NCU_CASE, 'ncu_case', 'exec')
    header = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream",'
              '"Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit",'
              '"Metric Value"')
    row = ('"{id}","1","python","host","{kernel}(const float *, float *)","1","7","(64, 1, 1)",'
           '"(2, 384, 64)","0","9.0","{section}","{metric}","{unit}","{value}"')
    output = '\n'.join([
        '==PROF== Connected to process 1', 'ncu case: done', header,
        row.format(id=0, kernel='void fwd<float, false>', section='GPU Speed Of Light Throughput',
                   metric='Compute (SM) Throughput', unit='%', value='31.2'),
        row.format(id=0, kernel='void fwd<float, false>', section='Occupancy',
                   metric='Achieved Occupancy', unit='%', value='9.8'),
        row.format(id=1, kernel='void wgrad<float>', section='Launch Statistics',
                   metric='Registers Per Thread', unit='register/thread', value='128'),
        '==PROF== Disconnected from process 1'])
    assert parse_ncu_csv(output) == {
        'void fwd<float, false>': [('GPU Speed Of Light Throughput', 'Compute (SM) Throughput', '%', '31.2'),
                                   ('Occupancy', 'Achieved Occupancy', '%', '9.8')],
        'void wgrad<float>': [('Launch Statistics', 'Registers Per Thread', 'register/thread', '128')]}
    assert parse_ncu_csv('==PROF== ERR_NVGPUCTRPERM\n') == {}
