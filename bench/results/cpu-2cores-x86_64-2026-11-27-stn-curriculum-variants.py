"""STN experiments 2026-11-27 (session 9): similarity-parametrised STN and an oracle rectifier."""
import math
import torch
import torch.nn.functional as F
from visionops.models import crnn as M

C = M._C


class SimilaritySTN(M.STNRecognizer):
    """The localiser predicts (angle, log scale, tx, ty) instead of six free entries."""

    def __init__(self, num_classes, in_size=(64, 128), **kw):
        super().__init__(num_classes, **kw)
        step = self.localizer.step_scale
        self.localizer = M._Localizer(1, 4, torch.zeros(4), "visionops", step_scale=step)
        self.aspect = in_size[1] / in_size[0]  # W / H of the input

    def theta(self, images):
        warming_up = self.training and torch.is_grad_enabled() and int(self.steps_seen) < self.warmup_steps
        if self.training and torch.is_grad_enabled():
            self.steps_seen += 1
        n = images.shape[0]
        if warming_up:
            return torch.eye(2, 3, dtype=images.dtype).expand(n, 2, 3)
        small = images
        if self.localizer_size is not None:
            small = F.adaptive_avg_pool2d(images, self.localizer_size)
        p = self.localizer(small)
        a, s = p[:, 0], torch.exp(p[:, 1])
        c, sn = torch.cos(a) * s, torch.sin(a) * s
        row0 = torch.stack([c, -sn / self.aspect, p[:, 2]], 1)
        row1 = torch.stack([sn * self.aspect, c, p[:, 3]], 1)
        return torch.stack([row0, row1], 1)


class CenterCropCRNN(M._CTCRecognizer):
    """Oracle: the clean line is the centre 32x100 box of a 'none' text line."""

    def __init__(self, num_classes):
        super().__init__()
        self.backend = "visionops"
        self.crnn = M.CRNN(num_classes, 1, 32)

    def forward(self, images):
        return self.crnn(images[:, :, 16:48, 14:114])


M._register("oracle-affine", lambda: CenterCropCRNN(C), "none", "oracle rectifier", lr=2e-3, eval_every=150)
M._register("stn-sim", lambda: SimilaritySTN(C, output_size=(32, 100), localizer_size=(32, 64), warmup_steps=2500,
                                             localizer_step_scale=0.1),
            "affine", "similarity STN", lr=2e-3, eval_every=150, find_unused_parameters=True)
M._register("stn-sim0", lambda: SimilaritySTN(C, output_size=(32, 100), localizer_size=(32, 64), warmup_steps=0,
                                              localizer_step_scale=0.1),
            "affine", "similarity STN no warmup", lr=2e-3, eval_every=150, find_unused_parameters=True)


class ZoomSimilaritySTN(SimilaritySTN):
    """SimilaritySTN whose identity output is a centred crop of ``zoom`` (x, y) of the input."""

    def __init__(self, num_classes, zoom=(0.9, 0.7), **kw):
        super().__init__(num_classes, **kw)
        self.zoom = zoom

    def theta(self, images):
        t = super().theta(images)
        z = torch.tensor([self.zoom[0], self.zoom[1], 1.0], dtype=t.dtype)
        # columns scale the output coordinates: crop first, then rotate/scale/translate
        return t * z


def _register_curriculum(name, build, ramp_steps, **kw):
    from visionops.data import text_lines

    calls = [0]

    def make_batch(g, n):
        strength = min(1.0, calls[0] / ramp_steps)
        calls[0] += 1
        return tuple(text_lines(n, g, distortion="affine", strength=strength))[:3]

    from visionops.training import Task, register_task
    register_task(Task(
        name=name, build_model=build, make_batch=make_batch, loss_fn=M._loss,
        evaluate=lambda model, device: M._accuracy(model, device, "affine", 500, 1.0),
        metric="accuracy", description=name, lr_schedule="cosine", lr=2e-3, eval_every=150, **kw))


_register_curriculum("crnn-affine-cur", lambda: M.CRNN(C, height=64), 1500)
_register_curriculum("stn-zsim-cur", lambda: ZoomSimilaritySTN(C, output_size=(32, 100), localizer_size=(32, 64),
                                                               localizer_step_scale=0.1), 1500,
                     find_unused_parameters=True)
_register_curriculum("stn-cur", lambda: M.STNRecognizer(C, output_size=(32, 100), localizer_size=(32, 64),
                                                        localizer_step_scale=0.1), 1500, find_unused_parameters=True)
