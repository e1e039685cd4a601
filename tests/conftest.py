"""Test-suite root: being here puts ``tests/`` on ``sys.path`` (pytest's default import mode),
so every test module can import the shared helpers beside it (``tiny_models``,
``cuda_checks``)."""
import pytest


@pytest.fixture(autouse=True)
def _no_tf32_in_cuda_tests(request):
    """Tests marked ``cuda`` compare float32 GPU results at 1e-4: TF32 (a 10-bit mantissa,
    cuDNN's default for convolutions) is off in cuBLAS and cuDNN while they run, and restored
    afterwards."""
    if request.node.get_closest_marker('cuda') is None:
        yield
        return
    import torch
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
