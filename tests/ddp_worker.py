"""torchrun worker for tests/test_training.py: train a task with the harness and
save what this rank ends with (not collected by pytest).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py TASK STEPS OUT [DEVICE] [SYNC_BN]

STEPS of the form ``5s`` means no step limit and a 5-second time budget instead.
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toy_tasks  # noqa: E402,F401  (registers toy, toy-nobn, toy-wide)
import visionops.models  # noqa: E402,F401  (registers the reference tasks)
from visionops.training import train  # noqa: E402

task, out = sys.argv[1], Path(sys.argv[3])
steps, minutes = (None, float(sys.argv[2][:-1]) / 60) if sys.argv[2].endswith("s") else (int(sys.argv[2]), 10.0)
device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
sync_bn = {"1": True, "0": False}.get(sys.argv[5]) if len(sys.argv) > 5 else None
result = train(task, minutes=minutes, device=device, max_steps=steps, log=None, sync_bn=sync_bn)
torch.save(
    {
        "state": {k: v.cpu() for k, v in result.model.state_dict().items()},
        "params": [n for n, _ in result.model.named_parameters()],
        "losses": result.losses,
        "metrics": result.metrics,
        "steps": result.steps,
        "world_size": result.world_size,
    },
    out / f"rank{os.environ.get('RANK', '0')}.pt",
)
# as the CLI's workers: leave without interpreter finalisation, where a gloo worker
# once aborted after its work was done (see visionops/__main__.py)
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
