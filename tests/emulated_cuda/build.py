"""Builds an emulated-CUDA harness (tests/emulated_cuda/*.cpp) with the kernel
section of a .cu file spliced in, for the *_cuda_emulation tests."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
COMPILER = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


def build(build_dir: Path, cuda_source: str, section: str, harness: str) -> ctypes.CDLL:
    """Compile tests/emulated_cuda/<harness>.cpp with the lines of cuda/<cuda_source>
    from the marker comment "// ---...--- <section>" to "// ---...--- end of <section>"
    available as <harness>_section.inc."""
    if COMPILER is None:
        pytest.skip("no C++ compiler to build the CUDA emulation with")
    pattern = re.compile(rf"^// -+ {re.escape(section)}$.*?^// -+ end of {re.escape(section)}$", re.S | re.M)
    found = pattern.search((ROOT / "cuda" / cuda_source).read_text())
    assert found, f"the '{section}' markers are missing from cuda/{cuda_source}"
    (build_dir / f"{harness}_section.inc").write_text(found.group(0) + "\n")
    library = build_dir / f"{harness}.so"
    built = subprocess.run(
        [COMPILER, "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", f"-I{ROOT / 'cpp' / 'include'}",
         f"-I{build_dir}", str(ROOT / "tests" / "emulated_cuda" / f"{harness}.cpp"), "-o", str(library)],
        capture_output=True, text=True,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    return ctypes.CDLL(str(library))
