"""The command line (check / bench / demo) and the docstring examples."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import subprocess
import sys

import pytest
import torch

import visionops


def _modules():
    for info in pkgutil.walk_packages(visionops.__path__, "visionops."):
        if info.name.endswith("__main__"):
            continue
        yield info.name


@pytest.mark.parametrize("name", sorted(_modules()))
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"


def test_build_info_reports_how_it_was_built():
    info = visionops.build_info()
    assert info["version"] == visionops.__version__
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert isinstance(info["cuda"], bool)
    assert info["cxx_standard"] >= 202002


def test_check_command_passes():
    out = subprocess.run([sys.executable, "-m", "visionops", "check", "--device", "cpu"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAIL" not in out.stdout and "checks passed" in out.stdout


def test_bench_command_writes_table_and_plot(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "visionops", "bench", "--family", "roi", "--device", "cpu", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    md = list(tmp_path.glob("*.md"))
    png = list(tmp_path.glob("*.png"))
    assert len(md) == 1 and len(png) == 1
    text = md[0].read_text()
    assert "| roi/roi_align_7x7_float32_fwd | cpu | torchvision |" in text
    assert png[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_family_is_rejected():
    out = subprocess.run([sys.executable, "-m", "visionops", "bench", "--family", "nope"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown family" in out.stderr
