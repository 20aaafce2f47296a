# RARE whose localiser regresses a similarity transform + 20 fiducial offsets (RARE(head="similarity")),
# rectifying to the paper's 32x100, with the recipe of `stn` (localiser on the input pooled to 32x64,
# off for 1000 steps and until the loss has left CTC's plateau, then at 0.3 of the rate)
import functools

from visionops.models import crnn as M


def _rare32(head="similarity"):
    return M.RARE(M._C, output_size=(32, 100), localizer_size=(32, 64), warmup_steps=1000,
                  warmup_loss=M._WARMUP_LOSS, localizer_step_scale=0.3, head=head)


for strength, suffix in ((1.0, ""), (1.5, "-strong")):
    M._register(f"rare-sim-32x100{suffix}", _rare32, "curved", f"RARE(head='similarity') to 32x100, strength {strength}",
                strength=strength, lr=2e-3, eval_every=150, curriculum_steps=M._CURRICULUM,
                find_unused_parameters=True)

# the base fiducials on the undistorted line's box (100x32 in 64x128: x +-0.78, y +-0.5), where the
# curriculum's first lines lie: the recogniser starts reading them at their full resolution
_BOX = (100 / 128, 32 / 64)
for head, strength in (("points", 1.0), ("similarity", 1.0), ("points", 1.5)):
    M._register(f"rare-{head}-box-32x100" + ("-strong" if strength > 1 else ""), functools.partial(
        lambda head: M.RARE(M._C, output_size=(32, 100), localizer_size=(32, 64), warmup_steps=1000,
                            warmup_loss=M._WARMUP_LOSS, localizer_step_scale=0.3, head=head, initial_crop=_BOX),
        head), "curved", f"RARE(head={head!r}) starting on the line's box, to 32x100, strength {strength}",
        strength=strength, lr=2e-3, eval_every=150, curriculum_steps=M._CURRICULUM, find_unused_parameters=True)

# the STN (similarity, 32x100) starting on the same box, on the strong affine lines (strength 1.5)
M._register("stn-box-strong", lambda: M.STNRecognizer(
    M._C, output_size=(32, 100), localizer_size=(32, 64), transform="similarity", warmup_steps=1000,
    warmup_loss=M._WARMUP_LOSS, localizer_step_scale=0.3, initial_crop=_BOX), "affine",
    "similarity STN starting on the line's box, to 32x100, strength 1.5", strength=1.5, lr=2e-3, eval_every=150,
    curriculum_steps=M._CURRICULUM, find_unused_parameters=True)
