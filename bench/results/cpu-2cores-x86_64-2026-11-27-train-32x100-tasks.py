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
