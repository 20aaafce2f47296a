"""The training harness: data-parallel (torchrun + DDP, gloo on CPU) training,
checkpoints and resume, SyncBatchNorm conversion.

The tasks come from tests/toy_tasks.py (loaded with ``--task-module``), so these
tests do not wait for the reference networks. ``DDP_TASKS`` lists the tasks the
generic tests run on; the CRNN runs the identical-weights test too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DEVICES, HAS_CUDA

import visionops
from visionops.training import TASKS, checkpoint_path, load_task_modules, rank_seed, train

HERE = Path(__file__).resolve().parent
TOY = str(HERE / "toy_tasks.py")
WORKER = str(HERE / "ddp_worker.py")
load_task_modules([TOY])

DDP_TASKS = ["toy"]
# The CRNN also trains under DDP (ranks identical, loss decreasing). It is left out of
# the resume tests: its cosine learning-rate schedule follows the wall clock of the
# time budget, so two runs are not bit-identical by design.
IDENTICAL_WEIGHTS_TASKS = DDP_TASKS + ["crnn"]
STEPS = 12  # per run; the resume tests continue to 2 * STEPS


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(visionops.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(extra)
    return env


def _torchrun(args: list[str], nproc: int = 2, timeout: float = 120) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def _cli(args: list[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "visionops", "train", *args, "--task-module", TOY]
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=timeout)


def _ok(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_same_state(a: dict, b: dict, exact: bool = True) -> None:
    """Checkpoints of the same computation: bit-identical on CPU (CPU kernels and 2-rank gloo
    sums are deterministic); on CUDA float atomics (roi_align backward) may add in another
    order, ~1 ulp per addition, which a few Adam steps keep far below 1e-4."""

    def same(x, y, what) -> None:
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if exact or not x.is_floating_point():
            assert torch.equal(x, y), what
        else:
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=str(what))

    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        same(a["model"][k], b["model"][k], k)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for p in sa:
        for k in sa[p]:
            same(sa[p][k], sb[p][k], (p, k))
    for ra, rb in zip(a["rng"], b["rng"], strict=True):
        assert torch.equal(ra["generator"], rb["generator"]) and torch.equal(ra["torch"], rb["torch"])
        assert (ra["cuda"] is None) == (rb["cuda"] is None)
        if ra["cuda"] is not None:
            assert torch.equal(ra["cuda"], rb["cuda"])


# ---------------------------------------------------------------- one process, in-process (fast)


@pytest.mark.parametrize("device", DEVICES)
def test_resume_single_process_matches_uninterrupted(tmp_path, device):
    kw = dict(device=device, log=None, checkpoint_every=4)
    train("toy", max_steps=6, checkpoint_dir=tmp_path / "a", **kw)
    first = _load(checkpoint_path(tmp_path / "a", "toy"))
    assert first["step"] == 6 and first["world_size"] == 1
    resumed = train("toy", max_steps=10, checkpoint_dir=tmp_path / "a", resume=True, **kw)
    straight = train("toy", max_steps=10, checkpoint_dir=tmp_path / "b", **kw)
    assert resumed.steps == straight.steps == 10 and len(resumed.losses) == 4
    # the last 4 training losses are the same numbers: same weights, optimiser state and samples at step 6
    if device == "cpu":
        assert resumed.losses == straight.losses[6:]
    else:
        torch.testing.assert_close(resumed.losses, straight.losses[6:], rtol=1e-4, atol=1e-5)
    _assert_same_state(_load(checkpoint_path(tmp_path / "a", "toy")), _load(checkpoint_path(tmp_path / "b", "toy")),
                       exact=device == "cpu")
    assert not list((tmp_path / "a").glob("*.tmp"))  # the temporary file was renamed over the checkpoint


def test_models_with_observe_loss_get_every_steps_training_loss(monkeypatch):
    """The harness reports each step's (all-reduced) training loss to a model
    that asks for it: the rectifiers' loss-gated warm-up reads it."""
    import toy_tasks

    seen = []
    monkeypatch.setattr(toy_tasks.ToyNet, "observe_loss", lambda self, loss: seen.append(loss), raising=False)
    result = train("toy", max_steps=5, device="cpu", log=None)
    assert seen == result.losses and len(seen) == 5


def test_curriculum_difficulty_follows_the_step_across_a_resume(tmp_path):
    import toy_tasks
    from visionops.training import TASKS, Task, register_task

    seen: list[float] = []

    def make_batch(g, n, difficulty):
        seen.append(difficulty)
        return toy_tasks.make_batch(g, n)

    toy = TASKS["toy"]
    register_task(Task(name="toy-curriculum", build_model=toy.build_model, make_batch=make_batch,
                       loss_fn=toy.loss_fn, evaluate=toy.evaluate, metric="accuracy", batch_size=4,
                       curriculum_steps=8))
    try:
        train("toy-curriculum", max_steps=6, device="cpu", log=None, checkpoint_dir=tmp_path)
        train("toy-curriculum", max_steps=10, device="cpu", log=None, checkpoint_dir=tmp_path, resume=True)
    finally:
        del TASKS["toy-curriculum"]
    assert seen == [0, 1 / 8, 2 / 8, 3 / 8, 4 / 8, 5 / 8, 6 / 8, 7 / 8, 1.0, 1.0]
    with pytest.raises(ValueError, match="curriculum_steps"):
        Task(name="x", build_model=toy.build_model, make_batch=make_batch, loss_fn=toy.loss_fn,
             evaluate=toy.evaluate, metric="accuracy", curriculum_steps=-1)


def test_resume_refuses_other_world_size_and_task(tmp_path):
    train("toy", max_steps=2, device="cpu", log=None, checkpoint_dir=tmp_path)
    path = checkpoint_path(tmp_path, "toy")
    state = _load(path)
    state["world_size"] = 2
    torch.save(state, path)
    with pytest.raises(ValueError, match="same --nproc"):
        train("toy", max_steps=4, device="cpu", log=None, checkpoint_dir=tmp_path, resume=True)
    state["world_size"], state["task"] = 1, "toy-nobn"
    torch.save(state, path)
    with pytest.raises(ValueError, match="holds task 'toy-nobn'"):
        train("toy", max_steps=4, device="cpu", log=None, checkpoint_dir=tmp_path, resume=True)


def test_resume_without_checkpoint_starts_from_scratch(tmp_path):
    lines: list[str] = []
    result = train("toy", max_steps=3, device="cpu", log=lines.append, progress=False, checkpoint_dir=tmp_path,
                   resume=True)
    assert result.steps == 3 and any("starting from scratch" in line for line in lines)
    assert lines[-1].startswith("toy: accuracy ") and "after 3 steps" in lines[-1]


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="needs checkpoint_dir"):
        train("toy", max_steps=1, log=None, resume=True)
    with pytest.raises(ValueError, match="checkpoint_every"):
        train("toy", max_steps=1, log=None, checkpoint_dir=tmp_path, checkpoint_every=0)
    with pytest.raises(ValueError, match="SyncBatchNorm needs CUDA"):
        train("toy", max_steps=1, log=None, sync_bn=True)
    with pytest.raises(ValueError, match="unknown 'nope'"):
        train("nope", max_steps=1, log=None)
    with pytest.raises(ValueError, match="no file"):
        load_task_modules([str(tmp_path / "missing.py")])


def test_cli_rejects_bad_combinations(capsys):
    from visionops.__main__ import main

    def run(*args: str) -> tuple[int, str]:
        code = main(["train", *args, "--task-module", TOY])
        return code, capsys.readouterr().err

    assert run("toy", "--resume") == (2, "--resume needs --checkpoint-dir\n")
    code, err = run("toy", "--sync-bn", "--device", "cpu")
    assert code == 2 and "needs --device cuda" in err
    assert run("toy", "--nproc", "0")[0] == 2
    assert run("toy", "--checkpoint-every", "0")[0] == 2
    code, err = run("nope")
    assert code == 2 and "unknown task 'nope'" in err and "'toy'" in err
    code, err = run("toy", "--curriculum-steps", "-1")
    assert code == 2 and "--curriculum-steps: expected >= 0" in err
    code, err = run("toy", "--curriculum-steps", "10")  # toy data has no difficulty argument
    assert code == 2 and "no data difficulty" in err
    if torch.cuda.device_count() < 2:
        code, err = run("toy", "--nproc", "2", "--device", "cuda")
        assert code == 2 and "needs 2 GPUs" in err


def test_task_modules_from_environment(tmp_path, monkeypatch, capsys):
    from visionops.__main__ import main

    module = tmp_path / "env_tasks.py"
    module.write_text(
        "import dataclasses\n"
        "from visionops.training import TASKS, register_task\n"
        "register_task(dataclasses.replace(TASKS['toy-nobn'], name='env-toy'))\n"
    )
    assert "env-toy" not in TASKS
    monkeypatch.setenv("VISIONOPS_TASK_MODULES", str(module))
    try:
        assert main(["train", "env-toy", "--max-steps", "2"]) == 0
        assert "env-toy: accuracy " in capsys.readouterr().out
    finally:
        TASKS.pop("env-toy", None)
        sys.modules.pop("_visionops_tasks_env_tasks", None)


# ---------------------------------------------------------------- DDP: 2 CPU processes, gloo


@pytest.mark.slow
@pytest.mark.parametrize("task", IDENTICAL_WEIGHTS_TASKS)
def test_ddp_ranks_hold_identical_weights_and_loss_decreases(tmp_path, task):
    _torchrun([WORKER, task, str(3 * STEPS), str(tmp_path)])
    r0, r1 = _load(tmp_path / "rank0.pt"), _load(tmp_path / "rank1.pt")
    assert r0["world_size"] == r1["world_size"] == 2 and r0["steps"] == r1["steps"] == 3 * STEPS
    # parameters: bit-identical (same all-reduced gradients, same optimiser). BatchNorm running
    # statistics are not compared: DDP broadcasts rank 0's buffers at the start of each forward,
    # and each rank then updates them with its own batch, so they legitimately differ by one update.
    for name in r0["params"]:
        assert torch.equal(r0["state"][name], r1["state"][name]), name
    assert r0["losses"] == r1["losses"]  # the logged loss is the all-reduced mean, the same on every rank
    losses = r0["losses"]
    k = max(2, len(losses) // 4)
    assert sum(losses[-k:]) / k < sum(losses[:k]) / k
    assert r0["metrics"] == r1["metrics"]  # rank 0 evaluates and broadcasts


@pytest.mark.slow
def test_ddp_trains_a_torchvision_detector_on_visionops_ops(tmp_path):
    """A torchvision Faster R-CNN swapped with use_visionops trains under DDP (gloo):
    after a few steps both ranks hold bit-identical parameters and they moved."""
    pytest.importorskip("torchvision", reason="the detector is torchvision's")
    import toy_tasks

    _torchrun([WORKER, "toy-fasterrcnn", "3", str(tmp_path)], timeout=300)
    r0, r1 = _load(tmp_path / "rank0.pt"), _load(tmp_path / "rank1.pt")
    assert r0["steps"] == r1["steps"] == 3
    for name in r0["params"]:
        assert torch.equal(r0["state"][name], r1["state"][name]), name
    torch.manual_seed(0)  # the harness seeds 0 before building: the same initial weights
    initial = toy_tasks._build_swapped_detector().state_dict()
    moved = [n for n in r0["params"] if not torch.equal(initial[n], r0["state"][n])]
    assert len(moved) > len(r0["params"]) // 2  # most parameters were updated by the 3 steps


@pytest.mark.slow
def test_ddp_time_budget_stops_every_rank_at_the_same_step(tmp_path):
    """No step limit, a 3 s budget: rank 0's clock decides and the other rank follows
    at the same step (it would otherwise hang in, or skip, a collective)."""
    _torchrun([WORKER, "toy-nobn", "3s", str(tmp_path)])
    r0, r1 = _load(tmp_path / "rank0.pt"), _load(tmp_path / "rank1.pt")
    assert r0["steps"] == r1["steps"] > 0 and len(r0["losses"]) == r0["steps"]
    for name in r0["params"]:
        assert torch.equal(r0["state"][name], r1["state"][name]), name


@pytest.mark.slow
def test_ddp_step_equals_one_process_on_both_ranks_samples(tmp_path):
    """2 ranks x batch B under DDP == one process averaging the losses of both ranks'
    batches: proves that the ranks draw different samples (with :func:`rank_seed`)
    and that DDP averages their gradients. ``toy-nobn`` has no BatchNorm, so the
    per-rank losses do not depend on how the samples are split."""
    steps = STEPS
    _torchrun([WORKER, "toy-nobn", str(steps), str(tmp_path)])
    ddp = _load(tmp_path / "rank0.pt")

    def one_process(rank_seeds: list[int]) -> tuple[torch.nn.Module, list[float]]:
        task = TASKS["toy-nobn"]
        torch.manual_seed(0)
        model = task.build_model()
        opt = torch.optim.AdamW(model.parameters(), lr=task.lr, weight_decay=task.weight_decay)
        gens = [torch.Generator().manual_seed(s) for s in rank_seeds]
        losses = []
        for _ in range(steps):
            loss = sum(task.loss_fn(model, task.make_batch(g, task.batch_size)) for g in gens) / len(gens)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), task.grad_clip)
            opt.step()
            losses.append(loss.item())
        return model, losses

    model, losses = one_process([rank_seed(0, 0), rank_seed(0, 1)])
    # float32 sums in another order (gloo's all-reduce vs autograd's): ~1e-7 relative per step;
    # Adam divides by sqrt(v), which can amplify that for near-zero gradients, hence 1e-4
    for name, p in model.named_parameters():
        torch.testing.assert_close(ddp["state"][name], p.detach(), rtol=1e-4, atol=1e-4, msg=name)
    torch.testing.assert_close(torch.tensor(ddp["losses"]), torch.tensor(losses), rtol=1e-4, atol=1e-5)
    # had both ranks drawn rank 0's samples, the weights would be those of rank 0's batches alone
    same_samples, _ = one_process([rank_seed(0, 0)])
    assert any((ddp["state"][n] - p.detach()).abs().max() > 1e-2 for n, p in same_samples.named_parameters())


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """Uninterrupted 2-process run of 2 * STEPS steps, per task (shared by the resume tests)."""
    runs: dict[str, dict] = {}

    def get(task: str) -> dict:
        if task not in runs:
            d = tmp_path_factory.mktemp(f"ref-{task}")
            _ok(_cli([task, "--nproc", "2", "--max-steps", str(2 * STEPS), "--checkpoint-dir", str(d),
                      "--checkpoint-every", "5"]))
            runs[task] = _load(checkpoint_path(d, task))
        return runs[task]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("task", DDP_TASKS)
def test_ddp_resume_matches_uninterrupted(tmp_path, task, reference_run):
    args = [task, "--nproc", "2", "--checkpoint-dir", str(tmp_path), "--checkpoint-every", "5"]
    out = _ok(_cli(args + ["--max-steps", str(STEPS)]))
    assert f"after {STEPS} steps" in out and "2 processes, gloo" in out
    assert out.count(f"{task}: ") == 1  # only rank 0 prints the final line
    assert _load(checkpoint_path(tmp_path, task))["step"] == STEPS
    out = _ok(_cli(args + ["--max-steps", str(2 * STEPS), "--resume"]))
    assert f"at step {STEPS}" in out
    _assert_same_state(_load(checkpoint_path(tmp_path, task)), reference_run(task))


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to follow the worker processes")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("task", DDP_TASKS)
def test_ddp_killed_run_resumes(tmp_path, task, sig, reference_run):
    """Kill the launcher mid-training: no process survives it, the last checkpoint is
    whole, and resuming from it ends exactly where an uninterrupted run ends."""
    reference = reference_run(task)
    args = [task, "--nproc", "2", "--checkpoint-dir", str(tmp_path), "--checkpoint-every", "5"]
    cmd = [sys.executable, "-m", "visionops", "train", *args, "--minutes", "5", "--task-module", TOY]
    # 100 ms per batch: the kill lands between checkpoints 5 and 2 * STEPS even on a loaded machine
    launcher = subprocess.Popen(cmd, env=_env(TOY_STEP_SLEEP="0.1"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    path = checkpoint_path(tmp_path, task)
    deadline = time.monotonic() + 90
    while not path.exists() and time.monotonic() < deadline and launcher.poll() is None:
        time.sleep(0.02)
    assert path.exists(), "no checkpoint appeared"
    family = _descendants(launcher.pid)
    assert len(family) >= 3  # torchrun + 2 workers
    launcher.send_signal(sig)
    launcher.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in family), "workers outlived the launcher"
    killed_at = _load(path)["step"]
    assert 5 <= killed_at < 2 * STEPS and killed_at % 5 == 0
    out = _ok(_cli(args + ["--max-steps", str(2 * STEPS), "--resume"]))
    assert f"at step {killed_at}" in out
    _assert_same_state(_load(path), reference)


# ---------------------------------------------------------------- SyncBatchNorm


def test_convert_sync_batchnorm_keeps_weights_and_outputs():
    import toy_tasks

    torch.manual_seed(0)
    model = toy_tasks.ToyNet(8, batch_norm=True)
    x = torch.randn(6, 1, 12, 12)
    model.train()
    model(x)  # non-trivial running statistics
    model.eval()
    expected = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(converted.norm, torch.nn.SyncBatchNorm)
    assert not any(type(m) is torch.nn.BatchNorm2d for m in converted.modules())
    assert converted.state_dict().keys() == state.keys()
    for k, v in converted.state_dict().items():
        assert torch.equal(v, state[k]), k
    converted.eval()
    # eval mode uses the running statistics: the same computation as BatchNorm2d
    torch.testing.assert_close(converted(x), expected, rtol=0, atol=0)
    # training mode without a process group falls back to the local batch statistics
    torch.manual_seed(1)
    plain = toy_tasks.ToyNet(8, batch_norm=True).train()
    sync = torch.nn.SyncBatchNorm.convert_sync_batchnorm(toy_tasks.ToyNet(8, batch_norm=True)).train()
    sync.load_state_dict(plain.state_dict())
    torch.testing.assert_close(sync(x), plain(x), rtol=0, atol=0)
    torch.testing.assert_close(sync.norm.running_mean, plain.norm.running_mean, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "shufflenet_v2"])
def test_convert_sync_batchnorm_on_the_backbones(name):
    """The reference backbones (visionops conv layers) convert: every BatchNorm
    becomes a SyncBatchNorm, the state dict is unchanged and eval logits are equal."""
    import visionops.models as models

    torch.manual_seed(0)
    model = getattr(models, name)(width_mult=0.25, num_classes=10) if name != "shufflenet_v2" \
        else models.shufflenet_v2(scale=0.5, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    model(x)  # non-trivial running statistics
    model.eval()
    expected = model(x)
    bn_count = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).eval()
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules()) == bn_count > 0
    assert not any(type(m) is torch.nn.BatchNorm2d for m in converted.modules())
    assert converted.state_dict().keys() == state.keys()
    for k, v in converted.state_dict().items():
        assert torch.equal(v, state[k]), k
    torch.testing.assert_close(converted(x), expected, rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(not HAS_CUDA or torch.cuda.device_count() < 2, reason="needs 2 GPUs (NCCL, one per rank)")
def test_sync_batchnorm_ddp_on_two_gpus(tmp_path):
    """With SyncBatchNorm every rank normalises with the statistics of both ranks'
    batches, so the running statistics (which plain DDP BatchNorm leaves different
    per rank) agree across ranks; the parameters agree as always."""
    _torchrun([WORKER, "toy", str(STEPS), str(tmp_path), "cuda", "1"])
    r0, r1 = _load(tmp_path / "rank0.pt"), _load(tmp_path / "rank1.pt")
    for name, value in r0["state"].items():
        # NCCL all-gathers then reduces in the same order on both ranks: identical up to float rounding
        torch.testing.assert_close(value, r1["state"][name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_nccl_sync_batchnorm_on_one_gpu(tmp_path):
    """The NCCL + SyncBatchNorm path on the one-GPU machines this project is lent:
    torchrun with one rank on the GPU trains the same model as a plain
    single-process run (SyncBatchNorm over one rank normalises with that rank's
    batch, the all-reduce of one rank is the identity), up to the rounding of
    SyncBatchNorm's own statistics kernels."""
    _torchrun([WORKER, "toy", str(STEPS), str(tmp_path), "cuda", "1"], nproc=1)
    distributed = _load(tmp_path / "rank0.pt")
    assert distributed["world_size"] == 1 and distributed["steps"] == STEPS
    single = train("toy", device="cuda", max_steps=STEPS, log=None, sync_bn=False)
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(distributed["state"][name], value.cpu(), rtol=1e-3, atol=1e-5, msg=name)


def test_progress_false_shows_no_bar_and_bad_schedule_rejected(capsys):
    """progress=False keeps stderr free of the tqdm bar (the learning-rate schedule's
    budget tracking once shadowed that switch), and an unknown schedule is rejected."""
    import dataclasses

    from visionops.training import TASKS

    lines: list[str] = []
    train("toy", max_steps=3, log=lines.append, progress=False)
    assert "toy:" not in capsys.readouterr().err and lines
    train("toy", max_steps=3, log=lines.append, progress=True)
    assert "toy:" in capsys.readouterr().err  # the bar is there when asked for
    with pytest.raises(ValueError, match="lr_schedule"):
        dataclasses.replace(TASKS["toy"], lr_schedule="linear")
