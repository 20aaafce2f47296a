"""sampling family: visionops vs torch, same inputs, same run (cases in visionops.benchmarks.sampling)."""

import pytest
from conftest import cases_for, run_case


@pytest.mark.parametrize("case,impl", cases_for("sampling"))
def test_sampling(benchmark, case, impl):
    run_case(benchmark, case, impl)
