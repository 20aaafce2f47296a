"""Text recognisers (CRNN, STN, RARE) and their synthetic data.

The central check: each model built on visionops ops (``backend="visionops"``)
and its twin built on torch ops (``backend="torch"``: ``nn.Conv2d``,
``F.ctc_loss``, ``F.affine_grid`` + ``F.grid_sample``, a TPS solved and
evaluated with plain torch ops) give the same scores, CTC loss and gradients
with the same weights.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICES
from visionops.data import ALPHABET, Alphabet, captchas, text_lines
from visionops.models import CRNN, RARE, STNRecognizer
from visionops.models.crnn import torch_tps_grid_sample
from visionops.ops import rare_fiducials

NUM_CLASSES = len(ALPHABET) + 1


# ---------------------------------------------------------------- data


def test_alphabet_round_trip_and_blank_convention():
    a = Alphabet()
    assert a.num_classes == 37
    targets, lengths = a.encode(["0az9", "b", ""])
    assert targets.tolist() == [[1, 11, 36, 10], [12, 0, 0, 0], [0, 0, 0, 0]]
    assert lengths.tolist() == [4, 1, 0]
    assert a.decode(targets[0]) == "0az9"
    with pytest.raises(ValueError, match="not in the alphabet"):
        a.encode(["aB"])


@pytest.mark.parametrize("make", [captchas, lambda n, g: text_lines(n, g, distortion="affine"),
                                  lambda n, g: text_lines(n, g, distortion="curved")])
def test_generators_are_deterministic_and_labels_decode_back(make):
    a = make(6, torch.Generator().manual_seed(7))
    b = make(6, torch.Generator().manual_seed(7))
    c = make(6, torch.Generator().manual_seed(8))
    assert torch.equal(a.images, b.images) and a.texts == b.texts and torch.equal(a.targets, b.targets)
    assert a.texts != c.texts and not torch.equal(a.images, c.images)
    assert a.images.dtype == torch.float32 and a.images.min() >= 0 and a.images.max() <= 1
    alphabet = Alphabet()
    for text, row, length in zip(a.texts, a.targets, a.target_lengths):
        assert 4 <= len(text) <= 6 and set(text) <= set(ALPHABET)
        assert int(length) == len(text)
        assert alphabet.decode(row[:length]) == text
        assert (row[length:] == 0).all() and (row[:length] > 0).all()  # padding only; no blank inside


def test_captchas_fixed_size_and_ink_present():
    batch = captchas(8, torch.Generator().manual_seed(0), width=160)
    assert batch.images.shape == (8, 1, 32, 160)
    # glyphs are dark on a light background: every image has clearly dark pixels and a light median
    flat = batch.images.flatten(1)
    assert (flat.median(dim=1).values > 0.55).all()
    assert (flat.min(dim=1).values < 0.4).all()


def test_text_lines_without_distortion_keep_the_box_centred():
    # "none" only pastes the 32x100 box at the centre of 64x128 (rows 16..47, columns 14..113):
    # without noise, everything outside it is the background level (atol: the float32 warp may leave
    # ~1e-7 of ink from zero-weight bilinear taps; a misplaced box leaves glyph ink, > 0.1)
    batch = text_lines(4, torch.Generator().manual_seed(0), distortion="none", noise=0.0)
    img = batch.images[:, 0]
    bg = img[:, :1, :1]
    for outside in (img[:, :15], img[:, 49:], img[:, :, :13], img[:, :, 115:]):
        torch.testing.assert_close(outside, bg.expand_as(outside), atol=1e-6, rtol=0)
    assert (img[:, 16:48, 14:114].amin(dim=(1, 2)) < bg.flatten() - 0.3).all()  # dark glyphs inside


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("width", [4, 37, 100, 128, 256])
def test_crnn_sequence_length_grows_with_width(width):
    model = CRNN(NUM_CLASSES).eval()
    out = model(torch.rand(2, 1, 32, width))
    # two stride-2 convolutions with padding 1: ceil(ceil(W / 2) / 2) columns
    t = -(-(-(-width // 2)) // 2)
    assert out.shape == (t, 2, NUM_CLASSES) and CRNN.output_length(width) == t


def test_crnn_rejects_wrong_height():
    with pytest.raises(ValueError, match="height"):
        CRNN(NUM_CLASSES)(torch.rand(1, 1, 30, 64))
    with pytest.raises(ValueError, match="multiple of 8"):
        CRNN(NUM_CLASSES, height=30)


@pytest.mark.parametrize("model", [CRNN(NUM_CLASSES, rnn="gru"), STNRecognizer(NUM_CLASSES), RARE(NUM_CLASSES)],
                         ids=["crnn", "stn", "rare"])
def test_untrained_greedy_decode_shapes(model):
    model.eval()
    height = 32 if isinstance(model, CRNN) else 64
    images = torch.rand(3, 1, height, 128)
    scores = model(images)
    decoded = model.predict(images)
    assert len(decoded) == 3
    for labels, path in zip(decoded, scores.argmax(2).t()):
        assert labels.dtype == torch.long and labels.dim() == 1
        # the collapsed best path: no blanks, no more labels than steps
        collapsed = [int(c) for i, c in enumerate(path) if c != 0 and (i == 0 or c != path[i - 1])]
        assert labels.tolist() == collapsed


def test_rectifiers_start_at_the_identity():
    # STN's theta = I and RARE's points = base fiducials: rectify() resamples the input to 32x100 unchanged
    x = torch.rand(2, 1, 32, 100)
    stn, rare = STNRecognizer(NUM_CLASSES).eval(), RARE(NUM_CLASSES).eval()
    # float32 resampling at the exact pixel centres; TPS weights from a float64 solve cast to float32
    torch.testing.assert_close(stn.rectify(x), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(rare.rectify(x), x, atol=1e-4, rtol=0)
    torch.testing.assert_close(rare.fiducials(x), rare_fiducials(20).expand(2, 20, 2))


def test_stn_localizer_reads_the_pooled_input():
    torch.manual_seed(0)
    model = STNRecognizer(NUM_CLASSES, localizer_size=(32, 64)).eval()
    torch.nn.init.normal_(model.localizer.out.weight, std=0.2)  # a non-constant theta
    x = torch.rand(2, 1, 64, 128)
    pooled = x.view(2, 1, 32, 2, 64, 2).mean((3, 5))  # 2x2 block means, computed independently
    # float32: the pooling sums 4 values in another order (~1e-7), the small CNN adds a few ulps
    torch.testing.assert_close(model.theta(x), model.localizer(pooled).view(2, 2, 3), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(model.theta(x), torch.eye(2, 3).expand(2, 2, 3))


def test_stn_localizer_step_scale_scales_the_departure_from_identity():
    x = torch.rand(2, 1, 64, 128, generator=torch.Generator().manual_seed(0))
    slow, full = (STNRecognizer(NUM_CLASSES, localizer_step_scale=s).eval() for s in (0.1, 1.0))
    torch.manual_seed(0)
    torch.nn.init.normal_(slow.localizer.out.weight, std=0.2)
    full.load_state_dict(slow.state_dict())  # same weights: only the scale differs
    eye = torch.eye(2, 3)
    # theta = I + scale * head; float32 head outputs ~0.1-1, differences of ~1e-7 after the subtraction
    torch.testing.assert_close(full.theta(x) - eye, 10 * (slow.theta(x) - eye), rtol=1e-4, atol=1e-5)
    assert (full.theta(x) - eye).abs().max() > 0.01


@pytest.mark.parametrize("cls", [STNRecognizer, RARE], ids=["stn", "rare"])
def test_warmup_holds_the_identity_then_trains_the_localizer(cls):
    torch.manual_seed(0)
    # output = input size: while warming up the identity warp is skipped, not resampled
    model = cls(NUM_CLASSES, output_size=(64, 128), warmup_steps=2)
    # a warp clearly off the identity once the localiser runs (RARE's 20 points move less per weight)
    torch.nn.init.normal_(model.localizer.out.weight, std=0.2 if cls is STNRecognizer else 2.0)
    batch = text_lines(4, torch.Generator().manual_seed(5), distortion="affine")
    x, targets, lengths = batch[:3]
    # evaluation (and any no-grad call) uses the localiser and does not count as a step
    model.eval()
    assert not torch.allclose(model(x), model.crnn(x), atol=1e-3)
    model.train()
    with torch.no_grad():
        model(x)
    assert int(model.steps_seen) == 0
    for step in range(3):
        model.zero_grad(set_to_none=True)
        loss = model.loss(x, targets, lengths)
        loss.backward()
        plain = model.crnn.loss(x, targets, lengths)
        grads = [p.grad for p in model.localizer.parameters()]
        if step < 2:
            # warm-up: exactly the CRNN on the unwarped input; the localiser gets no gradient
            assert torch.equal(loss, plain)
            assert all(g is None for g in grads) and not model.localizer_on
        else:
            assert abs(loss.item() - plain.item()) > 1e-3
            assert all(g is not None for g in grads) and model.localizer.out.weight.grad.abs().sum() > 0
    assert int(model.steps_seen) == 3 and model.localizer_on
    assert {"steps_seen", "loss_ema", "localizer_on"} <= set(model.state_dict())
    with pytest.raises(ValueError, match="warmup_steps"):
        cls(NUM_CLASSES, warmup_steps=-1)
    with pytest.raises(ValueError, match="warmup_loss"):
        cls(NUM_CLASSES, warmup_loss=0.0)


@pytest.mark.parametrize("cls", [STNRecognizer, RARE], ids=["stn", "rare"])
def test_loss_gated_warmup_waits_for_the_running_loss_then_stays_on(cls):
    model = cls(NUM_CLASSES, output_size=(64, 128), warmup_steps=1, warmup_loss=2.0).train()
    x = torch.rand(2, 1, 64, 128, generator=torch.Generator().manual_seed(0))

    def localizer_runs() -> bool:
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()
        return model.localizer.out.weight.grad is not None

    assert not localizer_runs()  # step 1: inside warmup_steps
    assert not localizer_runs()  # no loss observed yet (the running mean is NaN)
    model.observe_loss(3.7)  # CTC's plateau
    for _ in range(20):
        model.observe_loss(3.7)
        assert not localizer_runs()
    # the running mean moves 2% of the way per step: from 3.7, 50 steps at 1.0 bring it to 2.0
    # ((3.7 - 1) * 0.98**49 = 1.007 above 1.0; 0.98**50: 0.987)
    for _ in range(49):
        model.observe_loss(1.0)
    assert float(model.loss_ema) > 2.0 and not localizer_runs()
    model.observe_loss(1.0)
    assert float(model.loss_ema) <= 2.0 and localizer_runs()
    for _ in range(100):
        model.observe_loss(5.0)  # back above: the localiser stays on
    assert localizer_runs() and model.localizer_on


@pytest.mark.parametrize("cls, kw", [(STNRecognizer, {"output_size": (64, 128)}), (RARE, {"output_size": (64, 128)})],
                         ids=["stn", "rare"])
def test_rectifier_trains_exactly_as_the_plain_crnn_until_its_localiser_starts(cls, kw):
    """Same seed: the rectifier's CRNN starts with the plain CRNN's weights, and
    while its warm-up lasts its training steps are the plain CRNN's, bit for bit
    (a paired comparison: what differs afterwards is the localiser's doing)."""
    torch.manual_seed(3)
    plain = CRNN(NUM_CLASSES, height=64)
    torch.manual_seed(3)
    rect = cls(NUM_CLASSES, warmup_steps=3, **kw)
    for key, value in plain.state_dict().items():
        assert torch.equal(rect.crnn.state_dict()[key], value), key
    batch = text_lines(4, torch.Generator().manual_seed(1), distortion="affine")
    x, targets, lengths = batch[:3]
    losses = {}
    for name, model in (("plain", plain), ("rect", rect)):
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
        losses[name] = []
        for _ in range(5):
            opt.zero_grad(set_to_none=True)
            loss = model.loss(x, targets, lengths)
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
    assert losses["rect"][:3] == losses["plain"][:3]
    # step 4 runs the localiser (its zero-initialised head still gives the identity); its
    # update moves the warp, and step 5 differs
    assert losses["rect"][4] != losses["plain"][4]


def test_similarity_stn_turns_the_crop_rigidly_in_pixels():
    # head bias = (angle, log scale, tx, ty) / step_scale; theta's linear part, taken back to pixel
    # units of the 64x128 input (D = diag(W/H, 1)) and divided by the crop, is scale x a rotation
    model = STNRecognizer(NUM_CLASSES, transform="similarity", initial_crop=(0.9, 0.7),
                          localizer_step_scale=0.5).eval()
    x = torch.rand(3, 1, 64, 128, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.theta(x), torch.tensor([[0.9, 0, 0], [0, 0.7, 0]]).expand(3, 2, 3))
    angle, scale = 0.4, 0.8
    with torch.no_grad():
        model.localizer.out.bias.copy_(torch.tensor([angle, math.log(scale), 0.1, -0.2]) / 0.5)
    theta = model.theta(x).double()
    d = torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))
    pixel = d @ theta[:, :, :2] @ torch.diag(torch.tensor([1 / 0.9, 1 / 0.7], dtype=torch.float64)) @ d.inverse()
    c, s = math.cos(angle), math.sin(angle)
    expected = scale * torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    torch.testing.assert_close(pixel, expected.expand(3, 2, 2), rtol=0, atol=1e-6)  # float32 theta
    torch.testing.assert_close(theta[:, :, 2], torch.tensor([0.1, -0.2], dtype=torch.float64).expand(3, 2),
                               rtol=0, atol=1e-6)
    assert "crop" not in model.state_dict()  # a constructor argument, not a trained value
    for bad in ({"transform": "projective"}, {"initial_crop": (0.0, 1.0)}, {"initial_crop": (1.0,)}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            STNRecognizer(NUM_CLASSES, **bad)


def test_rare_similarity_head_moves_the_base_fiducials_rigidly_then_offsets_them():
    model = RARE(NUM_CLASSES, head="similarity", localizer_step_scale=0.5).eval()
    x = torch.rand(2, 1, 64, 128, generator=torch.Generator().manual_seed(0))
    base = rare_fiducials(20, dtype=torch.float64)
    torch.testing.assert_close(model.fiducials(x).double(), base.expand(2, 20, 2))  # identity, no offsets
    angle, scale, shift = 0.3, 0.7, torch.tensor([0.1, -0.2], dtype=torch.float64)
    offsets = 0.05 * torch.randn(20, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        model.localizer.out.bias.copy_(torch.cat([torch.tensor([angle, math.log(scale)], dtype=torch.float64),
                                                  shift, offsets.reshape(-1)]).float() / 0.5)
    # independently: in pixel units of the 64x128 input (x spans twice y's pixels), a rotation by
    # `angle` scaled by `scale`, then back to normalised coordinates, plus the shift and offsets
    d = torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))
    c, s = math.cos(angle), math.sin(angle)
    rot = scale * torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    expected = (base @ d) @ rot.t() @ d.inverse() + shift + offsets
    torch.testing.assert_close(model.fiducials(x).double(), expected.expand(2, 20, 2), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="head"):
        RARE(NUM_CLASSES, head="affine")


@pytest.mark.parametrize("head", ["points", "similarity"])
def test_rare_initial_crop_starts_on_the_central_box(head):
    # the fiducials start on the box (x +-0.5, y +-0.25 of the input): the rectified 32x100 image is
    # the input's rows [24, 40) x columns [32, 96) resampled, the affine crop of that box
    model = RARE(NUM_CLASSES, head=head, initial_crop=(0.5, 0.25)).eval()
    x = torch.rand(2, 1, 64, 128, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.fiducials(x), (rare_fiducials(20) * torch.tensor([0.5, 0.25])).expand(2, 20, 2))
    theta = torch.tensor([[0.5, 0, 0], [0, 0.25, 0]]).expand(2, 2, 3)
    expected = F.grid_sample(x, F.affine_grid(theta, [2, 1, 32, 100], align_corners=False),
                             padding_mode="border", align_corners=False)
    torch.testing.assert_close(model.rectify(x), expected, atol=1e-4, rtol=0)  # float32 TPS weights
    for bad in ((0.0, 1.0), (1.0,)):
        with pytest.raises(ValueError, match="initial_crop"):
            RARE(NUM_CLASSES, initial_crop=bad)


def test_affine_lines_rotate_rigidly_and_stay_inside_the_image():
    from visionops.data.text import _line_warp

    # shear 0 (style column 3 = 0.5): the warp, in pixel units of the output, is scale x rotation
    # of the box's pixel units, by the drawn angle (up to +-25 degrees x strength)
    n, size, box = 64, (64, 128), (32, 100)
    style = torch.rand(n, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    style[:, 3] = 0.5
    for strength in (0.5, 1.0, 1.5):
        a, t = _line_warp(style, "affine", strength, size, box)
        out_px = torch.diag(torch.tensor([size[1] / 2, size[0] / 2], dtype=torch.float64))
        box_px = torch.diag(torch.tensor([box[1] / 2, box[0] / 2], dtype=torch.float64))
        pixel = out_px @ a @ box_px.inverse()
        s = torch.linalg.det(pixel).sqrt()
        angle = torch.atan2(pixel[:, 1, 0], pixel[:, 0, 0])
        torch.testing.assert_close(pixel / s.view(n, 1, 1), torch.stack(
            [torch.stack([angle.cos(), -angle.sin()], 1), torch.stack([angle.sin(), angle.cos()], 1)], 1))
        torch.testing.assert_close(angle, math.radians(25) * strength * (2 * style[:, 2] - 1))
        assert (s <= 1 + 1e-12).all() and (s > 0.3).all()
        # every corner of the warped box stays inside the image (a steep line is shrunk to fit)
        corners = torch.tensor([[-1, -1], [1, -1], [-1, 1], [1, 1]], dtype=torch.float64)
        assert ((corners @ a.transpose(1, 2) + t.unsqueeze(1)).abs() < 1).all()
    # and in the images: no glyph ink on the border rows and columns (background level exactly)
    batch = text_lines(32, torch.Generator().manual_seed(2), distortion="affine", strength=1.5, noise=0.0)
    img = batch.images[:, 0]
    bg = img.amax(dim=(1, 2), keepdim=True)
    for border in (img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]):
        torch.testing.assert_close(border, bg[:, 0].expand_as(border), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- visionops build == torch build


def _pair(cls, device, **kw):
    torch.manual_seed(0)
    ours = cls(NUM_CLASSES, backend="visionops", **kw)
    if hasattr(ours, "localizer"):
        # leave the identity warp (x step_scale 0.1), so the sampler's position gradients matter
        torch.nn.init.normal_(ours.localizer.out.weight, std=0.2)
    theirs = cls(NUM_CLASSES, backend="torch", **kw)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours.double().to(device), theirs.double().to(device)


def _grads(model, images, batch):
    images = images.clone().requires_grad_(True)
    scores = model(images)
    loss = model.loss(images, batch.targets.to(images.device), batch.target_lengths)
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(loss, [images] + params)
    return scores, loss, grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls, kw", [(CRNN, {}), (STNRecognizer, {}),
                                     (STNRecognizer, {"localizer_size": (32, 64), "output_size": (32, 96)}),
                                     (STNRecognizer, {"transform": "similarity", "initial_crop": (0.9, 0.7)}),
                                     (RARE, {}), (RARE, {"head": "similarity"})],
                         ids=["crnn", "stn", "stn-small-localizer", "stn-similarity", "rare", "rare-similarity"])
def test_visionops_build_equals_torch_build(cls, kw, device):
    g = torch.Generator().manual_seed(3)
    batch = captchas(4, g) if cls is CRNN else text_lines(4, g, distortion="curved")
    ours, theirs = _pair(cls, device, **kw)
    images = batch.images.double().to(device)
    # train mode: BatchNorm uses batch statistics, so the whole graph is exercised
    s1, l1, g1 = _grads(ours, images, batch)
    s2, l2, g2 = _grads(theirs, images, batch)
    # float64 throughout: the builds differ only in summation order inside the kernels (conv,
    # bilinear sampling, the CTC recursion, the TPS basis sums), ~1e-15 relative per op and a
    # few hundred ops deep; 1e-9 leaves that margin and still catches any wrong term (>1e-4).
    torch.testing.assert_close(s1, s2, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(l1, l2, rtol=1e-9, atol=1e-9)
    names = ["images"] + [n for n, _ in ours.named_parameters()]
    for name, a, b in zip(names, g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=lambda m: f"gradient of {name}: {m}")
    assert g1[0].abs().sum() > 0  # the input gradient is not trivially zero


@pytest.mark.parametrize("device", DEVICES)
def test_torch_tps_matches_tps_grid_sampler_away_from_identity(device):
    from visionops.nn import TPSGridSampler

    g = torch.Generator().manual_seed(0)
    base = rare_fiducials(20, dtype=torch.float64)
    source = (base + 0.15 * torch.randn(3, 20, 2, generator=g, dtype=torch.float64)).to(device)
    x = torch.rand(3, 2, 40, 90, generator=g, dtype=torch.float64).to(device)
    sampler = TPSGridSampler((32, 100), 20, padding_mode="border").to(device, torch.float64)
    ours = sampler(x, source)
    theirs = torch_tps_grid_sample(x, source, sampler.target_points, (32, 100))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)  # float64: summation order only


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("cls", [CRNN, STNRecognizer, RARE])
def test_a_few_training_steps_lower_the_ctc_loss(cls):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    batch = captchas(8, g) if cls is CRNN else text_lines(8, g, distortion="affine")
    model = cls(NUM_CLASSES)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model.loss(*batch[:3])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # fitting one small batch: the loss must drop well below where it started (random init
    # spreads mass over 37 classes: ~ T log 37 / S per label); a broken gradient stalls it
    assert losses[-1] < 0.5 * losses[0], losses


def test_tasks_are_registered_and_use_ctc_targets():
    import visionops.models  # noqa: F401
    from visionops.training import TASKS

    for name in ("crnn", "stn", "stn-paired", "rare", "rare-paired", "crnn-affine", "crnn-curved", "stn-strong",
                 "crnn-affine-strong", "rare-strong", "crnn-curved-strong"):
        assert name in TASKS and TASKS[name].metric == "accuracy"
    # `stn` rectifies to the paper's 32x100 for a CRNN of height 32 (cheaper steps than the
    # plain CRNN on the 64x128 lines)
    stn = TASKS["stn"].build_model()
    assert stn.output_size == (32, 100) and stn.warmup_loss is not None
    assert stn(torch.rand(2, 1, 64, 128)).shape == (25, 2, Alphabet().num_classes)
    # `rare` too, its fiducials starting on the undistorted line's 100x32 box in the 64x128 input:
    # at the curriculum's start (strength 0) it reads the clean line itself
    rare = TASKS["rare"].build_model().eval()
    assert rare.output_size == (32, 100) and rare.warmup_loss is not None
    clean = text_lines(2, torch.Generator().manual_seed(5), distortion="curved", strength=0.0).images
    box = clean[:, :, 16:48, 14:114]
    torch.testing.assert_close(rare.fiducials(clean), (rare_fiducials(20) * torch.tensor([100 / 128, 0.5])).expand(2, 20, 2))
    torch.testing.assert_close(rare.rectify(clean), box, atol=1e-4, rtol=0)  # float32 TPS weights
    # the paired recipes start as their baselines: same initial recogniser
    for rectifier in ("stn-paired", "stn-strong", "rare-paired"):
        torch.manual_seed(0)
        rect = TASKS[rectifier].build_model()
        torch.manual_seed(0)
        plain = TASKS["crnn-affine"].build_model()
        assert rect.warmup_loss is not None and rect.output_size == (64, 128)
        assert all(torch.equal(rect.crnn.state_dict()[k], v) for k, v in plain.state_dict().items())
    # each rectifier and its plain baseline train on the same data, step by step: the warps'
    # strength ramps from 0 to 1 over the curriculum, then stays at 1
    for names, kind in ((("stn", "crnn-affine"), "affine"), (("rare", "crnn-curved"), "curved")):
        ramp = TASKS[names[0]].curriculum_steps
        assert ramp > 0 and TASKS[names[1]].curriculum_steps == ramp
        for step, strength in ((0, 0.0), (ramp // 2, 0.5), (ramp, 1.0), (10 * ramp, 1.0)):
            expected = text_lines(32, torch.Generator().manual_seed(4), distortion=kind, strength=strength)
            for name in names:
                images = TASKS[name].batch(torch.Generator().manual_seed(4), step)[0]
                torch.testing.assert_close(images, expected.images, rtol=0, atol=0)
    images, targets, lengths = TASKS["crnn"].make_batch(torch.Generator().manual_seed(0), 5)
    assert images.shape == (5, 1, 32, 128) and targets.shape[0] == 5 and lengths.shape == (5,)
    model = TASKS["crnn"].build_model()
    loss = TASKS["crnn"].loss_fn(model, (images, targets, lengths))
    expected = F.ctc_loss(model(images).log_softmax(2), targets, torch.full((5,), 32), lengths, zero_infinity=True)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)  # float32 CTC, same batch (BN in train mode)


def test_char_error_metric_is_the_edit_distance():
    from visionops.models.crnn import _edit_distance

    # textbook Levenshtein distances: substitutions, insertions and deletions each cost 1
    assert _edit_distance("kitten", "sitting") == 3
    assert _edit_distance("", "abc") == _edit_distance("abc", "") == 3
    assert _edit_distance("ab", "ba") == 2 and _edit_distance("abc", "abc") == 0
