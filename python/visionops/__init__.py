"""visionops: C++/CUDA vision operators for PyTorch.

Importing the package loads the compiled extension ``visionops._C``, which
registers every operator under ``torch.ops.visionops``; the Python API lives in
:mod:`visionops.ops` (functions) and :mod:`visionops.nn` (modules).
"""

import torch  # noqa: F401  (loads libtorch before the extension needs it)

from . import _C  # noqa: F401  (registers torch.ops.visionops.*)
from . import data, models, nn, ops

__version__: str = _C.build_info()["version"]


def build_info() -> dict:
    """How the installed extension was built: version, torch version, CUDA kernels and archs."""
    return dict(_C.build_info())


__all__ = ["ops", "nn", "models", "data", "build_info", "__version__"]
