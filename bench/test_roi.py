"""roi family: visionops vs torchvision, same inputs, same run (cases in visionops.benchmarks.roi)."""

import pytest
from conftest import cases_for, run_case


@pytest.mark.parametrize("case,impl", cases_for("roi"))
def test_roi(benchmark, case, impl):
    run_case(benchmark, case, impl)
