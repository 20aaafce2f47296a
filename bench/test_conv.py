"""conv family: visionops vs F.conv2d (torch's best layout), same inputs, same run (cases in visionops.benchmarks.conv)."""

import pytest
from conftest import cases_for, run_case


@pytest.mark.parametrize("case,impl", cases_for("conv"))
def test_conv(benchmark, case, impl):
    run_case(benchmark, case, impl)
