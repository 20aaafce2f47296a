import pytest
import torch

from visionops.benchmarks import family_cases
from visionops.benchmarks.timing import synchronized

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def cases_for(family: str, quick: bool = False):
    """(case, implementation) pairs for pytest parametrisation, ids like roi_align_7x7_float32_fwd-cpu-visionops."""
    params = []
    for device in DEVICES:
        for case in family_cases(family, device, quick):
            for impl in ("visionops", case.peer):
                params.append(pytest.param(case, impl, id=f"{case.name}-{device}-{impl}"))
    return params


def run_case(benchmark, case, impl):
    fns = case.setup()
    fn = fns.get(impl)
    if fn is None:
        pytest.skip(f"{impl} is not installed")
    benchmark.group = case.id
    benchmark(synchronized(fn, case.device))
