"""dwconv_cuda.cu compiles with nvcc for one architecture (sm_90), as setup.py builds it, with no warning
and no register spill in any kernel."""
import importlib.util
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, 'tools', 'analysis_tools', 'cuda_resource_usage.py')


def load_tool():
    spec = importlib.util.spec_from_file_location('cuda_resource_usage', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which('nvcc') is None, reason='nvcc is not installed: the CUDA build cannot be checked')
def test_cuda_source_compiles_without_warnings_or_spills(tmp_path):
    tool = load_tool()
    cmd = tool.nvcc_command(str(tmp_path / 'dwconv_cuda.o'), [90], ['-Xptxas=-v'])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    warnings = [line for line in output.splitlines() if 'warning' in line.lower()]
    assert not warnings, '\n'.join(warnings[:20])
    rows = tool.parse_ptxas(output)
    names = {tool.short_name(r['kernel']) for r in rows}
    # forward and weight gradient x 3 dtypes x 2 layouts, and the reduction x 3 dtypes.
    assert len(names) == 15 and {'forward fp32 NCHW', 'weight grad bf16 NHWC', 'reduce fp16'} <= names
    spilled = [(tool.short_name(r['kernel']), r['spill_stores'], r['spill_loads']) for r in rows
               if r['spill_stores'] or r['spill_loads'] or r['stack']]
    assert not spilled, spilled
