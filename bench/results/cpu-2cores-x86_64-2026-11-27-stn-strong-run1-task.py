from visionops.models import crnn as M
C = M._C
M._register("stn-same-strong2", lambda: M.STNRecognizer(C, output_size=(64, 128), localizer_size=(32, 64),
                                                        transform="similarity", warmup_steps=1000,
                                                        localizer_step_scale=0.3),
            "affine", "stn same-res, warmup 1000, step 0.3", strength=1.5, lr=2e-3, eval_every=150,
            curriculum_steps=M._CURRICULUM, find_unused_parameters=True)
