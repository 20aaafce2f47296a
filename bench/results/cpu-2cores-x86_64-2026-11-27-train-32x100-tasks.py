# rectifiers with the papers' 32x100 output (a CRNN of height 32 reads the rectified line)
from visionops.models import crnn as M

def _stn32():
    return M.STNRecognizer(M._C, output_size=(32, 100), localizer_size=(32, 64), transform="similarity",
                           warmup_steps=1000, warmup_loss=M._WARMUP_LOSS, localizer_step_scale=0.3)

def _rare32():
    return M.RARE(M._C, output_size=(32, 100), localizer_size=(32, 64), warmup_steps=1000,
                  warmup_loss=M._WARMUP_LOSS, localizer_step_scale=0.3)

M._register("stn-32x100", _stn32, "affine", "STN rectifying to 32x100", lr=2e-3, eval_every=150,
            curriculum_steps=M._CURRICULUM, find_unused_parameters=True)
M._register("rare-32x100", _rare32, "curved", "RARE rectifying to 32x100", lr=2e-3, eval_every=150,
            curriculum_steps=M._CURRICULUM, find_unused_parameters=True)
M._register("stn-32x100-strong", _stn32, "affine", "stn-32x100 on strength 1.5", strength=1.5, lr=2e-3,
            eval_every=150, curriculum_steps=M._CURRICULUM, find_unused_parameters=True)
M._register("rare-32x100-strong", _rare32, "curved", "rare-32x100 on strength 1.5", strength=1.5, lr=2e-3,
            eval_every=150, curriculum_steps=M._CURRICULUM, find_unused_parameters=True)

def _rare32_crop():
    # the fiducials start on a central box (x +-0.9, y +-0.75 of the input) rather than its edges:
    # the rectified 32x100 starts zoomed in on where the lines lie
    m = _rare32()
    import torch
    m.localizer.init.copy_((m.localizer.init.view(-1, 2) * torch.tensor([0.9, 0.75])).reshape(-1))
    m._identity_at_init = False
    return m

M._register("rare-32x100-crop", _rare32_crop, "curved", "rare-32x100 starting on a central crop", lr=2e-3,
            eval_every=150, curriculum_steps=M._CURRICULUM, find_unused_parameters=True)
M._register("rare-32x100-crop-strong", _rare32_crop, "curved", "rare-32x100-crop at strength 1.5", strength=1.5,
            lr=2e-3, eval_every=150, curriculum_steps=M._CURRICULUM, find_unused_parameters=True)
M._register("rare-32x100-affine", _rare32, "affine", "rare-32x100 on the affine lines", lr=2e-3, eval_every=150,
            curriculum_steps=M._CURRICULUM, find_unused_parameters=True)
