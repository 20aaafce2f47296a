"""The STN variants tried on 2026-11-27 (README, reference networks): load with
``python -m visionops train stn-points --task-module <this file>``."""
import torch
from visionops.models import crnn as M
from visionops.ops.sampling import rare_fiducials
from visionops.nn.sampling import AffineGridSampler

class PointsSTN(M._CTCRecognizer):
    def __init__(self, num_classes, output_size=(32, 100), k=20, step_scale=0.1, localizer_size=None):
        super().__init__()
        self.backend = "visionops"
        self.output_size = output_size
        self.localizer_size = localizer_size
        base = rare_fiducials(k)
        self.k = k
        self.localizer = M._Localizer(1, 2 * k, base, "visionops", step_scale=step_scale)
        p = torch.cat([base, torch.ones(k, 1)], 1).double()  # [K, 3] (x, y, 1)
        self.register_buffer("fit", torch.linalg.pinv(p).float())  # [3, K]
        self.sampler = AffineGridSampler(output_size, padding_mode="border")
        self.crnn = M.CRNN(num_classes, 1, output_size[0])
    def theta(self, images):
        small = images
        if self.localizer_size is not None:
            small = torch.nn.functional.adaptive_avg_pool2d(images, self.localizer_size)
        pts = self.localizer(small).view(-1, self.k, 2)
        return (self.fit @ pts).transpose(1, 2)  # [N, 2, 3]
    def forward(self, images):
        return self.crnn(self.sampler(images, self.theta(images)))

C = M._C
M._register("stn-points", lambda: PointsSTN(C), "affine", "points STN", lr=2e-3, eval_every=150)
M._register("stn-points-strong", lambda: PointsSTN(C), "affine", "points STN strong", strength=1.5, lr=2e-3, eval_every=150)
M._register("stn-points-s1", lambda: PointsSTN(C, step_scale=1.0), "affine", "points STN scale1", lr=2e-3, eval_every=150)
M._register("stn-same-strong", lambda: M.STNRecognizer(C, output_size=(64, 128), localizer_size=(32, 64), localizer_step_scale=0.1),
            "affine", "STN same-size strong", strength=1.5, lr=2e-3, eval_every=150)
M._register("stn-same", lambda: M.STNRecognizer(C, output_size=(64, 128), localizer_size=(32, 64), localizer_step_scale=0.1),
            "affine", "STN same-size", lr=2e-3, eval_every=150)
