import os

# cuBLAS (conv2d's GEMMs on CUDA) is deterministic only with a fixed workspace
# configuration, which must be set before the first cuBLAS handle is created.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# CI: few examples, no deadline (2 slow cores); HYPOTHESIS_PROFILE=dev explores more.
settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
# tools/gpu_sanitize.sh: kernels run 10-100x slower under compute-sanitizer
settings.register_profile(
    "sanitize", max_examples=5, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = torch.cuda.is_available()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]),
]


@pytest.fixture(autouse=True)
def _no_tf32():
    """float32 references computed by torch on CUDA (F.conv2d through cuDNN, GEMMs)
    must not use TF32 (cuDNN's default on Ampere and later): its ~1e-3 relative
    error is far above the tolerances of the float32 comparisons. visionops'
    kernels never use TF32."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.fixture(autouse=True)
def _restore_determinism():
    """Tests that switch deterministic mode on must not leak it."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``large`` (more than 2**31 elements, ~5 GiB of host or ~20 GiB
    of device memory) run only with VISIONOPS_LARGE=1; otherwise they are
    deselected (reported in the summary), not skipped one by one."""
    if os.environ.get("VISIONOPS_LARGE") == "1":
        return
    large = [item for item in items if item.get_closest_marker("large")]
    if large:
        config.hook.pytest_deselected(items=large)
        items[:] = [item for item in items if not item.get_closest_marker("large")]


# tools/gpu_sanitize.sh: a time-boxed run sets VISIONOPS_DEADLINE (Unix seconds) so
# that pytest ends by itself and every process exits normally: compute-sanitizer
# writes a process's report when the process ends, and a run killed by `timeout`
# lost its workers' reports (H100, 2026-11-27). Past VISIONOPS_DEADLINE no test
# starts; past VISIONOPS_HARD_DEADLINE a test still running is stopped (it fails
# with DeadlineStop): one gradcheck under racecheck outlived the first margin
# (H100, third run of 2026-11-27).
_DEADLINE = float(os.environ.get("VISIONOPS_DEADLINE", "inf"))
_HARD_DEADLINE = float(os.environ.get("VISIONOPS_HARD_DEADLINE", "inf"))


class DeadlineStop(Exception):
    """A test interrupted at VISIONOPS_HARD_DEADLINE."""


def _stop_at_hard_deadline(signum, frame):
    raise DeadlineStop("VISIONOPS_HARD_DEADLINE passed: this time-boxed run stopped the test")


def pytest_runtest_setup(item):
    import signal
    import threading
    import time

    now = time.time()
    if now > _DEADLINE:
        pytest.skip("VISIONOPS_DEADLINE passed: this time-boxed run left the rest out")
    if _HARD_DEADLINE != float("inf") and threading.current_thread() is threading.main_thread():
        # the handler runs when the interpreter next gets control (after the CUDA
        # call in flight returns), so the process still ends normally
        signal.signal(signal.SIGALRM, _stop_at_hard_deadline)
        signal.setitimer(signal.ITIMER_REAL, max(_HARD_DEADLINE - now, 0.01))


def pytest_runtest_teardown(item):
    if _HARD_DEADLINE != float("inf"):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            signal.setitimer(signal.ITIMER_REAL, 0)
