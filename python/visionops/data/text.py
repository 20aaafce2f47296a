"""Synthetic text images for CRNN / STN / RARE: captchas and distorted text lines.

Everything is drawn from a ``torch.Generator`` and rendered with Pillow's
bundled font (``ImageFont.load_default(size=...)``, Pillow >= 10.1), so a batch
is a pure function of the generator state: no font or data downloads.

Labels follow the CTC convention of :func:`visionops.ops.ctc_loss`: class 0 is
the blank, characters of :data:`ALPHABET` are classes ``1..len(ALPHABET)``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

__all__ = ["ALPHABET", "Alphabet", "TextBatch", "captchas", "text_lines", "random_strings"]

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


class Alphabet:
    """Maps strings to CTC class indices and back (blank = 0, characters 1..n).

    >>> a = Alphabet("abc")
    >>> a.num_classes
    4
    >>> targets, lengths = a.encode(["cab", "b"])
    >>> targets
    tensor([[3, 1, 2],
            [2, 0, 0]])
    >>> lengths
    tensor([3, 1])
    >>> a.decode(torch.tensor([3, 1, 2]))
    'cab'
    """

    def __init__(self, characters: str = ALPHABET) -> None:
        if len(set(characters)) != len(characters) or not characters:
            raise ValueError(f"characters: expected distinct characters, got {characters!r}")
        self.characters = characters
        self._index = {c: i + 1 for i, c in enumerate(characters)}

    @property
    def num_classes(self) -> int:
        """Characters plus the blank: the ``num_classes`` of a CRNN."""
        return len(self.characters) + 1

    def encode(self, strings: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(targets [N, S] int64 padded with 0, lengths [N] int64)``, S = longest string."""
        try:
            rows = [[self._index[c] for c in s] for s in strings]
        except KeyError as e:
            raise ValueError(f"strings: character {e.args[0]!r} is not in the alphabet") from None
        s = max((len(r) for r in rows), default=0)
        targets = torch.zeros(len(rows), s, dtype=torch.long)
        for i, r in enumerate(rows):
            targets[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return targets, torch.tensor([len(r) for r in rows], dtype=torch.long)

    def decode(self, labels: Tensor | Sequence[int]) -> str:
        """Class indices (blanks already removed, e.g. from ``ctc_greedy_decode``) to a string."""
        return "".join(self.characters[int(i) - 1] for i in labels)

    def decode_batch(self, labels: Sequence[Tensor]) -> list[str]:
        return [self.decode(x) for x in labels]


class TextBatch(NamedTuple):
    """A batch of text images: ``images [N, 1, H, W]`` float32 in [0, 1] (ink
    dark on a light background), ``targets [N, S]`` int64 padded with 0,
    ``target_lengths [N]`` int64, and the strings themselves."""

    images: Tensor
    targets: Tensor
    target_lengths: Tensor
    texts: list[str]


@functools.lru_cache(maxsize=64)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def random_strings(n: int, generator: torch.Generator | None, min_len: int = 4, max_len: int = 6,
                   characters: str = ALPHABET) -> list[str]:
    """``n`` strings of uniform length in ``[min_len, max_len]``, characters uniform over ``characters``.

    >>> s = random_strings(100, torch.Generator().manual_seed(0), 4, 6, "ab")
    >>> sorted({len(x) for x in s}), sorted(set("".join(s)))
    ([4, 5, 6], ['a', 'b'])
    """
    if not 1 <= min_len <= max_len:
        raise ValueError(f"min_len, max_len: expected 1 <= min_len <= max_len, got {min_len}, {max_len}")
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=generator).tolist()
    chars = torch.randint(0, len(characters), (n, max_len), generator=generator).tolist()
    return ["".join(characters[c] for c in row[:k]) for row, k in zip(chars, lengths)]


def _uniform(generator: torch.Generator | None, n: int, k: int, low: float, high: float) -> list[list[float]]:
    return (low + (high - low) * torch.rand(n, k, generator=generator, dtype=torch.float64)).tolist()


def _render(text: str, u: list[float], height: int, width: int, background: int, ink: int, size: int,
            slant: float, clutter_lines: int, spacing: float):
    """One captcha as a Pillow image; every random choice comes from ``u`` (floats in [0, 1))."""
    from PIL import Image, ImageDraw

    font = _font(size)
    advances = [font.getlength(c) for c in text]
    total = sum(advances) + spacing * (len(text) - 1)
    # wide canvas so that the shear never cuts a glyph; cropped back below
    canvas = Image.new("L", (width + height, height), background)
    draw = ImageDraw.Draw(canvas)
    x0 = height / 2 + u[0] * max(width - total - 4, 0) + 2
    top = font.getbbox("0")[1]
    y_room = max(height - size - 2, 0)
    x = x0
    for i, (c, adv) in enumerate(zip(text, advances)):
        jitter_y = (u[4 + i] - 0.5) * min(y_room, 6)
        y = (height - size) / 2 - top / 2 + jitter_y
        draw.text((x, y), c, font=font, fill=ink)
        x += adv + spacing
    for j in range(clutter_lines):
        v = u[10 + 5 * j: 15 + 5 * j]
        xa, xb = v[0] * (width + height), v[1] * (width + height)
        ya, yb = v[2] * height, v[3] * height
        shade = int(ink + (background - ink) * (0.45 + 0.3 * v[4]))  # fainter than the glyphs
        draw.line((xa, ya, xb, yb), fill=shade, width=1)
    # shear about the middle row: output (x, y) reads input (x + s (y - h/2) + h/2, y)
    shear = slant * (2 * u[1] - 1)
    warped = canvas.transform(
        canvas.size, Image.Transform.AFFINE, (1.0, shear, height / 2 - shear * height / 2, 0.0, 1.0, 0.0),
        resample=Image.Resampling.BILINEAR, fillcolor=background,
    )
    return warped.crop((0, 0, width, height))


def _to_tensor(images) -> Tensor:
    data = b"".join(im.tobytes() for im in images)
    w, h = images[0].size
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(len(images), 1, h, w).float() / 255.0


def captchas(
    n: int,
    generator: torch.Generator | None = None,
    *,
    width: int = 128,
    height: int = 32,
    min_len: int = 4,
    max_len: int = 6,
    font_sizes: tuple[int, int] = (18, 24),
    slant: float = 0.3,
    clutter_lines: int = 2,
    noise: float = 0.08,
    alphabet: Alphabet | None = None,
) -> TextBatch:
    """Renders ``n`` captchas: random strings of ``min_len..max_len`` characters
    over ``[0-9a-z]`` in Pillow's bundled font, with a random size, per-glyph
    vertical jitter and spacing, a random horizontal shear (slant, up to
    ``slant`` pixels per pixel of height), ``clutter_lines`` random lines
    fainter than the glyphs, random contrast and additive Gaussian noise of standard deviation
    ``noise``.

    Deterministic: the same generator state gives the same batch.

    Args:
        n: batch size.
        generator: source of all randomness (default: torch's global one).
        width, height: image size; every image is padded to this fixed width.
        font_sizes: inclusive range of font sizes in pixels.

    Returns:
        :class:`TextBatch` with ``images [n, 1, height, width]`` float32 in [0, 1].

    >>> b = captchas(2, torch.Generator().manual_seed(0))
    >>> b.images.shape, b.targets.shape[0], b.target_lengths.tolist() == [len(t) for t in b.texts]
    (torch.Size([2, 1, 32, 128]), 2, True)
    """
    alphabet = alphabet or Alphabet()
    texts = random_strings(n, generator, min_len, max_len, alphabet.characters)
    params = _uniform(generator, n, 10 + 5 * clutter_lines, 0.0, 1.0)
    style = torch.rand(n, 4, generator=generator, dtype=torch.float64).tolist()
    images = []
    for text, u, s in zip(texts, params, style):
        size = font_sizes[0] + int(s[0] * (font_sizes[1] - font_sizes[0] + 1))
        background = 170 + int(s[1] * 86)
        ink = int(s[2] * 90)
        spacing = s[3] * 3 - 0.5
        images.append(_render(text, u, height, width, background, ink, size, slant, clutter_lines, spacing))
    x = _to_tensor(images) if images else torch.zeros(0, 1, height, width)
    if noise > 0:
        x = (x + noise * torch.randn(x.shape, generator=generator)).clamp_(0, 1)
    targets, lengths = alphabet.encode(texts)
    if targets.shape[1] == 0:
        targets = torch.zeros(n, max_len, dtype=torch.long)
    return TextBatch(x, targets, lengths, texts)


def _curve_points(n: int, generator: torch.Generator | None, strength: float) -> Tensor:
    """Where the 20 canonical fiducials (10 on the top, 10 on the bottom edge of the
    text box) land in the distorted image: an arc of random bend plus a random
    perspective-like tilt of the text height, normalised coordinates ``[n, 20, 2]``."""
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    bend = strength * (2 * u[:, 0:1] - 1)  # vertical offset of the middle vs the ends
    taper = 0.35 * strength * (2 * u[:, 1:2] - 1)  # text height grows left to right (or shrinks)
    xs = torch.linspace(-1, 1, 10, dtype=torch.float64).view(1, 10)
    offset = bend * (1 - xs**2)
    half = 1 + taper * xs
    top = torch.stack([xs.expand(n, 10), offset - half], dim=2)
    bottom = torch.stack([xs.expand(n, 10), offset + half], dim=2)
    return torch.cat([top, bottom], dim=1)


def _line_warp(style: Tensor, distortion: str, strength: float, size: tuple[int, int],
               box: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The affine part of :func:`text_lines`' warps: ``a [n, 2, 2]`` and ``t [n, 2]``
    map the box's normalised coordinates to the output's (``a p + t``), drawn from
    the columns 2-6 of ``style [n, 8]`` (float64 in [0, 1))."""
    n = style.shape[0]
    bh, bw = box
    # the box occupies this fraction of the output at scale 1 (normalised coordinates)
    fx, fy = bw / size[1], bh / size[0]
    rot = math.radians(25) * strength * (2 * style[:, 2] - 1)
    shear = 0.3 * strength * (2 * style[:, 3] - 1)
    scale = 1.0 - 0.4 * strength * style[:, 4]
    if distortion == "curved":
        rot, shear, scale = rot * 0.4, shear * 0.4, 1.0 - 0.2 * strength * style[:, 4]
    if distortion == "none":
        rot, shear, scale = rot * 0, shear * 0, torch.ones_like(scale)
    # the warp acts on pixels, so that a rotation turns the line rigidly: in the output's
    # normalised coordinates A = D^-1 R Sh D diag(fx, fy), D = diag(W / H, 1) its aspect
    # (a rotation of the normalised square would turn the baseline by less and slant the
    # letters instead)
    aspect = size[1] / size[0]
    c, si = torch.cos(rot), torch.sin(rot)
    a = torch.zeros(n, 2, 2, dtype=torch.float64)
    a[:, 0, 0], a[:, 0, 1], a[:, 1, 0], a[:, 1, 1] = c, -si / aspect, si * aspect, c
    sh = torch.eye(2, dtype=torch.float64).repeat(n, 1, 1)
    sh[:, 0, 1] = shear / aspect
    a = a @ sh @ torch.diag(torch.tensor([fx, fy], dtype=torch.float64))
    # half-extents of the warped box (its corners are (+-1, +-1)); a steep line is shrunk
    # until it fits, and the rest of the image is the room left for the translation
    extent = a.abs().sum(dim=2)
    scale = torch.minimum(scale, 0.98 / extent.amax(dim=1).clamp_min(1e-12))
    a = scale.view(n, 1, 1) * a
    room = (1 - scale.view(n, 1) * extent).clamp_min(0)
    tx = room[:, 0] * (2 * style[:, 5] - 1) * 0.8
    ty = room[:, 1] * (2 * style[:, 6] - 1) * 0.5
    if distortion == "none":
        tx, ty = tx * 0, ty * 0
    return a, torch.stack([tx, ty], dim=1)


def text_lines(
    n: int,
    generator: torch.Generator | None = None,
    *,
    distortion: str = "affine",
    size: tuple[int, int] = (64, 128),
    box: tuple[int, int] = (32, 100),
    min_len: int = 4,
    max_len: int = 6,
    strength: float = 1.0,
    noise: float = 0.05,
    alphabet: Alphabet | None = None,
) -> TextBatch:
    """Text lines for rectifying recognisers (STN, RARE): a clean string is
    rendered into a ``box`` (height, width) image, then warped into a larger
    ``size`` image by a random affine map (``distortion="affine"``: rotation up
    to +-25 degrees and shear up to 0.3 of the line's pixels, scale 0.6-1, less
    where a steep line would not fit, translation within the room left) or a random curved
    thin-plate-spline map (``"curved"``: an arc bend, a tapering height, then
    a milder affine map) scaled by ``strength``; then a random background level
    and Gaussian noise. ``"none"`` centres the box without warping.

    The warps are :func:`visionops.ops.affine_grid_sample` and
    :func:`visionops.ops.tps_grid_sample` (geometry in float64, sampling in
    float32).

    Returns:
        :class:`TextBatch` with ``images [n, 1, *size]`` float32 in [0, 1].

    >>> b = text_lines(3, torch.Generator().manual_seed(0), distortion="curved")
    >>> b.images.shape
    torch.Size([3, 1, 64, 128])
    """
    from ..ops.sampling import affine_grid_sample, rare_fiducials, tps_fit, tps_grid_sample

    if distortion not in ("none", "affine", "curved"):
        raise ValueError(f"distortion: expected 'none', 'affine' or 'curved', got {distortion!r}")
    alphabet = alphabet or Alphabet()
    bh, bw = box
    texts = random_strings(n, generator, min_len, max_len, alphabet.characters)
    style = torch.rand(n, 8, generator=generator, dtype=torch.float64)
    images = []
    for text, s in zip(texts, style.tolist()):
        # clean, tightly framed line: the image a perfect rectifier would produce
        font_size = 20 + int(s[0] * 5)
        images.append(_render(text, [0.5, 0.5] + [0.5] * 8, bh, bw, 255, 0, font_size, 0.0, 0, s[1] * 2))
    clean = (1.0 - _to_tensor(images).double()) if images else torch.zeros(0, 1, bh, bw, dtype=torch.float64)
    a, t = _line_warp(style, distortion, strength, size, box)
    if distortion == "curved":
        base = rare_fiducials(20, dtype=torch.float64)
        landed = _curve_points(n, generator, 0.8 * strength)
        # where the fiducials land in the output, after the mild affine map
        landed = landed @ a.transpose(1, 2) + t.unsqueeze(1)
        # the output samples the box: fit the TPS output -> box (maps each landed point to its fiducial)
        w, aff = tps_fit(base.expand(n, 20, 2), landed)
        out = tps_grid_sample(clean.float(), w.float(), aff.float(), landed.float(), size, padding_mode="zeros")
    else:
        inv = torch.linalg.inv(a)
        theta = torch.cat([inv, -(inv @ t.unsqueeze(2))], dim=2)
        out = affine_grid_sample(clean.float(), theta.float(), size, padding_mode="zeros")
    background = (0.6 + 0.4 * style[:, 7]).view(n, 1, 1, 1)
    x = (background * (1 - out.double().clamp(0, 1))).float()
    if noise > 0:
        x = (x + noise * torch.randn(x.shape, generator=generator)).clamp_(0, 1)
    targets, lengths = alphabet.encode(texts)
    return TextBatch(x, targets, lengths, texts)
