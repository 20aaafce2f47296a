"""Experiment: the paired STN vs plain CRNN at affine strength 2.0 (rotation up to +-50 deg)."""
from visionops.models.crnn import CRNN, _C, _register, _CURRICULUM, _stn_for_lines

_register("stn-2", _stn_for_lines, "affine", "STN, affine x2", strength=2.0, lr=2e-3, eval_every=150,
          curriculum_steps=_CURRICULUM, find_unused_parameters=True)
_register("crnn-affine-2", lambda: CRNN(_C, height=64), "affine", "plain, affine x2", strength=2.0, lr=2e-3,
          eval_every=150, curriculum_steps=_CURRICULUM)
