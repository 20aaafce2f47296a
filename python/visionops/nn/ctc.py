"""nn.Module wrapper of the ctc family: a drop-in for ``torch.nn.CTCLoss``."""

from __future__ import annotations

from torch import Tensor, nn

from ..ops.ctc import Lengths, ctc_loss

__all__ = ["CTCLoss"]


class CTCLoss(nn.Module):
    """Module form of :func:`visionops.ops.ctc_loss`, with ``torch.nn.CTCLoss``'s
    constructor arguments.

    >>> loss = CTCLoss(blank=0, zero_infinity=True)
    >>> lp = torch.randn(12, 2, 5).log_softmax(2)
    >>> loss(lp, torch.tensor([[1, 2, 2], [3, 0, 0]]), [12, 10], [3, 1]).shape
    torch.Size([])
    """

    def __init__(self, blank: int = 0, reduction: str = "mean", zero_infinity: bool = False):
        super().__init__()
        self.blank = blank
        self.reduction = reduction
        self.zero_infinity = zero_infinity

    def forward(self, log_probs: Tensor, targets: Tensor, input_lengths: Lengths, target_lengths: Lengths) -> Tensor:
        return ctc_loss(log_probs, targets, input_lengths, target_lengths, self.blank, self.reduction, self.zero_infinity)

    def extra_repr(self) -> str:
        return f"blank={self.blank}, reduction={self.reduction!r}, zero_infinity={self.zero_infinity}"
