"""Random boxes and RoIs shaped like those a detector's heads see."""

from __future__ import annotations

import torch
from torch import Tensor


def random_boxes(
    n: int,
    image_size: tuple[int, int],
    *,
    min_size: float = 4.0,
    max_size: float | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """``Tensor[n, 4]`` ``(x1, y1, x2, y2)`` boxes inside an image of ``(height, width)``,
    side lengths uniform in ``[min_size, max_size]`` (default: a third of the image).

    >>> random_boxes(3, (100, 200), generator=torch.Generator().manual_seed(0)).shape
    torch.Size([3, 4])
    """
    height, width = image_size
    max_size = max_size if max_size is not None else max(min_size, min(height, width) / 3)
    u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
    w = min_size + u[:, 0] * (max_size - min_size)
    h = min_size + u[:, 1] * (max_size - min_size)
    x1 = u[:, 2] * (width - w).clamp(min=0)
    y1 = u[:, 3] * (height - h).clamp(min=0)
    boxes = torch.stack([x1, y1, x1 + w, y1 + h], dim=1)
    return boxes.to(dtype=dtype, device=device)


def random_rois(
    n: int,
    batch_size: int,
    image_size: tuple[int, int],
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    **kwargs,
) -> Tensor:
    """``Tensor[n, 5]`` ``(batch_index, x1, y1, x2, y2)`` with images drawn uniformly.

    >>> rois = random_rois(4, 2, (64, 64), generator=torch.Generator().manual_seed(0))
    >>> rois.shape, set(rois[:, 0].tolist()) <= {0.0, 1.0}
    (torch.Size([4, 5]), True)
    """
    boxes = random_boxes(n, image_size, generator=generator, dtype=torch.float64, **kwargs)
    index = torch.randint(0, batch_size, (n, 1), generator=generator).to(torch.float64)
    return torch.cat([index, boxes], dim=1).to(dtype=dtype, device=device)
