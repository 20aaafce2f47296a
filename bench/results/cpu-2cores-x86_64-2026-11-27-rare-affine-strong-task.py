from visionops.models import crnn as M
C = M._C
M._register("rare-affine-strong", lambda: M.RARE(C, output_size=(64, 128), localizer_size=(32, 64), warmup_steps=1000,
                                                 localizer_step_scale=0.3),
            "affine", "RARE, STN recipe, strong affine", strength=1.5, lr=2e-3, eval_every=150,
            curriculum_steps=M._CURRICULUM, find_unused_parameters=True)
