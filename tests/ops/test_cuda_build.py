"""dwconv_cuda.cu compiles with nvcc for one architecture (sm_90), as setup.py builds it, with no warning
and no register spill in any kernel, and the tensor-core kernels' hot loops issue HMMA instructions."""
import importlib.util
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, 'tools', 'analysis_tools', 'cuda_resource_usage.py')
# nvcc compiles 23 kernels: minutes on two cores, longer on a loaded machine.
pytestmark = pytest.mark.timeout(2400)
TC_KERNELS = {f'{kind} TC {dtype} {layout}' for kind in ('forward', 'weight grad') for dtype in ('fp16', 'bf16')
              for layout in ('NCHW', 'NHWC')}


def load_tool():
    spec = importlib.util.spec_from_file_location('cuda_resource_usage', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def compiled(tmp_path_factory):
    """(tool, object file, nvcc output) of dwconv_cuda.cu compiled for sm_90 with -Xptxas=-v."""
    if shutil.which('nvcc') is None:
        pytest.skip('nvcc is not installed: the CUDA build cannot be checked')
    tool = load_tool()
    obj = str(tmp_path_factory.mktemp('nvcc') / 'dwconv_cuda.o')
    proc = subprocess.run(tool.nvcc_command(obj, [90], ['-Xptxas=-v']), capture_output=True, text=True,
                          timeout=2400)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return tool, obj, output


def test_cuda_source_compiles_without_warnings_or_spills(compiled):
    tool, _, output = compiled
    warnings = [line for line in output.splitlines() if 'warning' in line.lower()]
    assert not warnings, '\n'.join(warnings[:20])
    rows = tool.parse_ptxas(output)
    names = {tool.short_name(r['kernel']) for r in rows}
    # forward and weight gradient x 3 dtypes x 2 layouts, the reduction x 3 dtypes, and the tensor-core
    # forward and weight gradient x 2 dtypes x 2 layouts.
    assert len(names) == 23 and {'forward fp32 NCHW', 'weight grad bf16 NHWC', 'reduce fp16'} <= names
    assert TC_KERNELS <= names
    spilled = [(tool.short_name(r['kernel']), r['spill_stores'], r['spill_loads']) for r in rows
               if r['spill_stores'] or r['spill_loads'] or r['stack']]
    assert not spilled, spilled


def test_tensor_core_kernels_issue_hmma(compiled):
    tool, obj, _ = compiled
    path = tool.sass_tool_path()
    if not path:
        pytest.skip('cuobjdump / nvdisasm not found (CUDA toolkit bin/ or triton): the SASS cannot be read')
    mix = tool.sass_mix(obj, 90, 'HMMA', 'TC', path)
    assert set(mix) == TC_KERNELS
    shares = {name: int(text.split('%')[0]) for name, text in mix.items()}
    assert all(share >= 5 for share in shares.values()), mix
