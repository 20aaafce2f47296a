"""boxes family: visionops vs torchvision, same inputs, same run (cases in visionops.benchmarks.boxes)."""

import pytest
from conftest import cases_for, run_case


@pytest.mark.parametrize("case,impl", cases_for("boxes"))
def test_boxes(benchmark, case, impl):
    run_case(benchmark, case, impl)
