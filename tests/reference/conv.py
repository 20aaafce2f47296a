"""Float64 oracle of the depthwise convolution that visits only the taps inside
the image (the zero padding contributes nothing, not 0 * weight), for the
non-finite-weight tests: torch's own kernels disagree there (its float32
oneDNN path skips the padding for some shapes, its float64 path multiplies it).
"""

from __future__ import annotations

import numpy as np


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _taps(x_shape, w_shape, stride, padding):
    """(oh, ow, i, j, ih, iw) of every tap that reads a pixel inside the image."""
    _, _, H, W = x_shape
    _, _, KH, KW = w_shape
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    OH, OW = (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1
    for oh in range(OH):
        for ow in range(OW):
            for i in range(KH):
                for j in range(KW):
                    ih, iw = oh * sh - ph + i, ow * sw - pw + j
                    if 0 <= ih < H and 0 <= iw < W:
                        yield oh, ow, i, j, ih, iw


def depthwise_forward(x: np.ndarray, w: np.ndarray, stride, padding) -> np.ndarray:
    """x [N, C, H, W], w [C * m, 1, KH, KW] -> [N, C * m, OH, OW] in float64."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    N, C, H, W = x.shape
    OC, _, KH, KW = w.shape
    m = OC // C
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    OH, OW = (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1
    out = np.zeros((N, OC, OH, OW))
    src = np.repeat(x, m, axis=1)  # output channel oc reads input channel oc // m
    for oh, ow, i, j, ih, iw in _taps(x.shape, w.shape, stride, padding):
        out[:, :, oh, ow] += w[:, 0, i, j] * src[:, :, ih, iw]
    return out


def depthwise_grad_input(go: np.ndarray, w: np.ndarray, x_shape, stride, padding) -> np.ndarray:
    """d loss / d x for the output gradient go [N, C * m, OH, OW], in float64."""
    go, w = go.astype(np.float64), w.astype(np.float64)
    N, C, H, W = x_shape
    m = w.shape[0] // C
    gi = np.zeros((N, C * m, H, W))
    for oh, ow, i, j, ih, iw in _taps(x_shape, w.shape, stride, padding):
        gi[:, :, ih, iw] += w[:, 0, i, j] * go[:, :, oh, ow]
    return gi.reshape(N, C, m, H, W).sum(axis=2)


def depthwise_grad_weight(go: np.ndarray, x: np.ndarray, w_shape, stride, padding) -> np.ndarray:
    """d loss / d w [C * m, 1, KH, KW] for the output gradient go, in float64: only
    the products an output makes (an inf in a column no output reads stays out)."""
    go, x = go.astype(np.float64), x.astype(np.float64)
    m = w_shape[0] // x.shape[1]
    src = np.repeat(x, m, axis=1)
    gw = np.zeros(w_shape)
    for oh, ow, i, j, ih, iw in _taps(x.shape, w_shape, stride, padding):
        gw[:, 0, i, j] += (go[:, :, oh, ow] * src[:, :, ih, iw]).sum(axis=0)
    return gw
