"""ctc family: visionops vs torch.nn.functional.ctc_loss, same inputs, same run (cases in visionops.benchmarks.ctc)."""

import pytest
from conftest import cases_for, run_case


@pytest.mark.parametrize("case,impl", cases_for("ctc"))
def test_ctc(benchmark, case, impl):
    run_case(benchmark, case, impl)
