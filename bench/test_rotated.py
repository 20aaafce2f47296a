"""rotated family: visionops vs shapely / torchvision reference points, same inputs, same run
(cases and the meaning of each peer column in visionops.benchmarks.rotated)."""

import pytest
from conftest import cases_for, run_case


@pytest.mark.parametrize("case,impl", cases_for("rotated"))
def test_rotated(benchmark, case, impl):
    run_case(benchmark, case, impl)
