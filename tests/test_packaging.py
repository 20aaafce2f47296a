"""What a user installs (issue 9): the wheel, the sdist, the typed and
documented public API."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest
import torch

import visionops
import visionops.nn
import visionops.ops

ROOT = Path(__file__).resolve().parents[1]
# name and version of [project] (tomllib is Python 3.11+; the package supports 3.10)
PROJECT = dict(re.findall(r'^(name|version) = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M))


def _public(module) -> list[tuple[str, object]]:
    return [(name, getattr(module, name)) for name in module.__all__]


def _callables(module):
    for name, obj in _public(module):
        if inspect.isclass(obj):
            yield f"{module.__name__}.{name}.__init__", obj.__init__, obj
            if issubclass(obj, torch.nn.Module):
                yield f"{module.__name__}.{name}.forward", obj.forward, obj
        elif callable(obj):
            yield f"{module.__name__}.{name}", obj, None


API = list(_callables(visionops.ops)) + list(_callables(visionops.nn))


@pytest.mark.parametrize("name, fn, owner", API, ids=[a[0] for a in API])
def test_public_api_has_type_hints(name, fn, owner):
    """Every parameter and the return value are annotated (``py.typed`` promises it)."""
    sig = inspect.signature(fn)
    missing = [p for p, v in sig.parameters.items() if p != "self" and v.annotation is inspect.Parameter.empty
               and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
    assert not missing, f"{name}: parameters without a type hint: {missing}"
    if not name.endswith("__init__"):
        assert sig.return_annotation is not inspect.Signature.empty, f"{name}: no return type hint"


@pytest.mark.parametrize("name, obj", _public(visionops.ops) + _public(visionops.nn))
def test_public_api_has_docstrings(name, obj):
    """A real docstring: more than one line, and for ops the shapes they take."""
    doc = inspect.getdoc(obj) or ""
    assert len(doc.strip().splitlines()) >= 2, f"{name}: missing or one-line docstring"
    if inspect.isfunction(obj) and obj.__module__.startswith("visionops.ops"):
        assert "[" in doc or "Tensor" in doc, f"{name}: the docstring gives no shapes"


def test_py_typed_marker_is_shipped():
    assert (Path(visionops.__file__).parent / "py.typed").is_file()


# ---------------------------------------------------------------- wheel and sdist


def _tracked_sources() -> set[str]:
    out = subprocess.run(["git", "ls-files", "cpp", "cuda", "python", "CMakeLists.txt", "pyproject.toml", "README.md"],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout: the sdist contents cannot be compared with the tracked files")
    return set(out.stdout.split())


def test_sdist_contains_every_source_file(tmp_path):
    """The sdist (scikit-build-core's backend, as ``python -m build --sdist``
    calls it) holds every tracked source needed to build, and no build output."""
    code = "import sys, scikit_build_core.build as b; print(b.build_sdist(sys.argv[1]))"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    name = out.stdout.strip().splitlines()[-1]
    assert name == f"{PROJECT['name']}-{PROJECT['version']}.tar.gz"
    with tarfile.open(tmp_path / name) as tar:
        prefix = f"{PROJECT['name']}-{PROJECT['version']}/"
        members = {m.name.removeprefix(prefix) for m in tar.getmembers() if m.isfile()}
    missing = _tracked_sources() - members
    assert not missing, f"sdist lacks {sorted(missing)[:10]}"
    assert "PKG-INFO" in members
    leaked = [m for m in members if m.startswith((".venv", "build/")) or m.endswith((".so", ".o"))]
    assert not leaked, f"build outputs in the sdist: {leaked[:10]}"


@pytest.mark.slow
def test_wheel_builds_installs_into_fresh_venv_and_imports(tmp_path):
    """``pip wheel .`` (incremental: scikit-build-core reuses build/{wheel_tag}),
    installed into a fresh venv that sees torch but not this checkout, imports
    and records how it was built. No network: --no-index, --no-deps."""
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    out = subprocess.run([*pip, "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-w", str(dist), str(ROOT)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (wheel,) = dist.glob("visionops-*.whl")
    assert wheel.name.startswith(f"visionops-{PROJECT['version']}-cp{sys.version_info.major}{sys.version_info.minor}-")

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    out = subprocess.run([*pip, "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (site / "visionops" / "__init__.py").is_file(), out.stdout[-3000:]
    # then torch and numpy from this interpreter's site-packages, appended after the venv's own
    # (a .pth line; written after the install, or pip would find this checkout's visionops
    # there and skip the wheel), so the wheel's visionops shadows any visionops beside torch
    (site / "torch_from_host.pth").write_text(str(Path(torch.__file__).resolve().parents[1]) + "\n")

    probe = (
        "import json, torch, visionops, visionops.ops as ops\n"
        "keep = ops.nms(torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]]),"
        " torch.tensor([0.9, 0.8, 0.7]), 0.5)\n"
        "print(json.dumps({'file': visionops.__file__, 'info': visionops.build_info(), 'keep': keep.tolist()}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    out = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).resolve().is_relative_to(env_dir.resolve()), result["file"]
    assert result["keep"] == [0, 2]
    info = result["info"]
    assert info["version"] == PROJECT["version"]
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    # built like the package under test (same build directory, same toolchain)
    assert info == visionops.build_info()
