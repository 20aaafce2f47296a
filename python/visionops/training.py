"""Training harness behind ``python -m visionops train TASK``.

A model family registers a :class:`Task` (how to build the model, draw a
synthetic batch, compute the loss and evaluate on a held-out set); the harness
owns everything else: device placement, the optimiser, the time budget,
progress output, checkpoints and the final metric line. Keeping the loop here,
once, is what lets the distributed and checkpoint/resume logic apply to every
model alike.

Data-parallel training. :func:`train` called in a process started by
``torchrun`` (``torch.distributed.run``, which sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``) joins the process group (gloo on CPU, NCCL on CUDA with one GPU
per local rank) and wraps the model in ``DistributedDataParallel``:

* rank ``r`` draws its own samples from a generator seeded with
  :func:`rank_seed` ``(seed, r)``; the batch size is per rank, so ``N``
  processes see ``N * batch_size`` samples per step;
* rank 0 alone decides when to stop (step limit or time budget) and every rank
  learns the decision in the one small all-reduce per step that also averages
  the training loss, so no rank is ever left waiting in a collective;
* the held-out metrics are computed by rank 0 only and broadcast: after the
  gradient all-reduce every rank holds the same weights, and ``Task.evaluate``
  scores a fixed held-out set, so evaluating on every rank would repeat the
  same computation ``N`` times for the same number;
* only rank 0 prints and writes checkpoints (``<checkpoint_dir>/<task>.pt``,
  written to a temporary file then renamed, so a kill never leaves a torn
  file): model, optimiser, step, elapsed time and the RNG states of every rank
  (sample generator, torch CPU and CUDA generators). ``resume=True`` restores
  all of it, so an interrupted run continues exactly where the checkpoint left
  it: ``N`` steps then a resumed run to ``M`` steps gives the same weights as
  ``M`` steps at once.

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) the same loop runs in one process.
``python -m visionops train TASK --nproc N`` starts torchrun for one machine;
on several machines run torchrun yourself with the same command after
``-m visionops`` (see ``python -m visionops train --help``), e.g. on each node
``torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint
HOST:29500 --rdzv-id RUN -m visionops train crnn --device cuda --checkpoint-dir
DIR --resume``.

Extra tasks. ``python -m visionops train`` imports :mod:`visionops.models` (the
reference tasks), then every module named by ``--task-module`` or by the
:data:`TASK_MODULES_ENV` environment variable, before it looks the task up; the
launcher passes the same command line and environment to every torchrun
worker, so a task registered that way trains data-parallel too
(``tests/toy_tasks.py`` is such a module).
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist

__all__ = [
    "Task",
    "TASKS",
    "register_task",
    "train",
    "TrainResult",
    "rank_seed",
    "load_task_modules",
    "checkpoint_path",
    "TASK_MODULES_ENV",
]

#: Environment variable naming extra modules (dotted names or ``.py`` paths,
#: separated by ``os.pathsep`` or commas) that register tasks; read by
#: ``python -m visionops train`` in the launcher and in every worker.
TASK_MODULES_ENV = "VISIONOPS_TASK_MODULES"


@dataclass
class Task:
    """One trainable reference model on synthetic data.

    ``make_batch(generator, batch_size)`` returns a tuple on the CPU, drawn only
    from ``generator`` (so every rank can draw different, reproducible samples);
    ``loss_fn(model, batch)`` receives that batch already moved to the device and
    runs the model once, by calling it or one of its own methods
    (``model.loss(...)``): under DDP ``model`` is a proxy that sends those calls
    through ``DistributedDataParallel``'s forward, which arms the gradient
    all-reduce; ``evaluate(model, device)`` scores the model (in eval mode,
    unwrapped) on a held-out set drawn from a fixed seed and returns named
    metrics, ``metric`` naming the one that the final line reports.
    ``batch_size`` is per process. ``find_unused_parameters`` is passed to DDP
    for models whose forward leaves some parameters without a gradient.
    ``curriculum_steps > 0`` makes the data harder over the first steps:
    ``make_batch(generator, batch_size, difficulty=...)`` is then called with
    ``difficulty = min(1, step / curriculum_steps)`` (a function of the step
    alone, so a resumed run and every rank draw what an uninterrupted run does).
    """

    name: str
    build_model: Callable[[], torch.nn.Module]
    make_batch: Callable[[torch.Generator, int], tuple]
    loss_fn: Callable[[torch.nn.Module, tuple], torch.Tensor]
    evaluate: Callable[[torch.nn.Module, torch.device], dict[str, float]]
    metric: str
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = 5.0
    eval_every: int = 200
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    find_unused_parameters: bool = False
    lr_schedule: str = "constant"  # or "cosine": decay over the time/step budget
    curriculum_steps: int = 0

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule: expected 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.curriculum_steps < 0:
            raise ValueError(f"curriculum_steps: expected >= 0, got {self.curriculum_steps}")

    def batch(self, generator: torch.Generator, step: int) -> tuple:
        """The training batch of ``step`` (see ``curriculum_steps``)."""
        if self.curriculum_steps:
            return self.make_batch(generator, self.batch_size, difficulty=min(1.0, step / self.curriculum_steps))
        return self.make_batch(generator, self.batch_size)


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    TASKS[task.name] = task
    return task


@dataclass
class TrainResult:
    """What :func:`train` returns (identical on every rank).

    ``steps`` and ``seconds`` count from the start of the run, including the
    part done before a resume; ``losses`` holds the training loss of each step
    of this invocation (averaged over ranks); ``model`` is the trained module
    (unwrapped from DDP, on the training device).
    """

    task: str
    steps: int
    seconds: float
    metrics: dict[str, float]
    history: list[tuple[int, float, dict[str, float]]]  # (step, seconds, metrics)
    world_size: int = 1
    losses: list[float] = field(default_factory=list)
    model: torch.nn.Module | None = None
    steps_per_second: float = 0.0  # this invocation's training steps (no evaluation, nothing before a resume)
    samples_per_second: float = 0.0  # all ranks together


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s sample generator (and torch RNG) for run seed ``seed``.

    Rank 0 uses ``seed`` itself, so a one-process run is the single-process run.

    >>> rank_seed(0, 0), rank_seed(0, 1)
    (0, 1000003)
    """
    return seed + 1_000_003 * rank


def checkpoint_path(checkpoint_dir: str | os.PathLike, task: str) -> Path:
    """Where the last checkpoint of ``task`` lives: ``<checkpoint_dir>/<task>.pt``."""
    return Path(checkpoint_dir) / f"{task}.pt"


def load_task_modules(specs: Iterable[str]) -> None:
    """Import modules that register extra tasks (see :data:`TASK_MODULES_ENV`).

    Each spec is a dotted module name (``my_pkg.tasks``) or a path to a ``.py``
    file (imported under its file stem). Importing twice is harmless.
    """
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        if spec.endswith(".py") or os.sep in spec:
            path = Path(spec).resolve()
            if not path.is_file():
                raise ValueError(f"task module: no file {str(path)!r}")
            name = f"_visionops_tasks_{path.stem}"
            if name in sys.modules:
                continue
            module_spec = importlib.util.spec_from_file_location(name, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)


def _to_device(batch: tuple, device: torch.device) -> tuple:
    return tuple(b.to(device, non_blocking=True) if isinstance(b, torch.Tensor) else b for b in batch)


class _Dist:
    """Rank/world bookkeeping; a no-op stand-in when not launched by torchrun."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.owns_group = False
        if device.type == "cuda":
            if self.world > 1:
                if self.local_rank >= torch.cuda.device_count():
                    raise RuntimeError(
                        f"local rank {self.local_rank} has no GPU: {torch.cuda.device_count()} visible; "
                        "start at most one process per GPU (--nproc / --nproc-per-node)"
                    )
                device = torch.device("cuda", self.local_rank)
            elif device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(device)  # device guard: NCCL and every kernel use this GPU
        self.device = device
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            kwargs = {"device_id": device} if device.type == "cuda" else {}
            dist.init_process_group(backend, **kwargs)
            self.owns_group = True
        if self.world > 1:
            self.world, self.rank = dist.get_world_size(), dist.get_rank()
        # small tensors for the per-step collective live where the backend wants them
        self.comm_device = device if (self.world > 1 and dist.get_backend() == "nccl") else torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def agree(self, loss: torch.Tensor | float, stop_on_rank0: bool,
              progress_on_rank0: float = 0.0) -> tuple[float, bool, float]:
        """Average ``loss`` over ranks and share rank 0's stop decision and its
        progress through the budget (which drives the learning-rate schedule, so
        every rank steps with the same rate) in one all-reduce."""
        vec = torch.stack([
            torch.as_tensor(loss, dtype=torch.float64).detach().to(self.comm_device).reshape(()),
            torch.tensor(float(stop_on_rank0 and self.main), dtype=torch.float64, device=self.comm_device),
            torch.tensor(progress_on_rank0 if self.main else 0.0, dtype=torch.float64, device=self.comm_device),
        ])
        if self.world > 1:
            dist.all_reduce(vec)
        mean_loss, stop, progress = vec.tolist()
        return mean_loss / self.world, stop > 0, progress

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        if self.world == 1:
            return [obj]
        out: list[Any] | None = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def close(self, finished: bool) -> None:
        if self.owns_group:
            # after a normal finish every rank reaches the teardown before any starts
            # it: a gloo group torn down while its peer still talks to it aborted a
            # worker at exit ("terminate called without an active exception"), seen
            # under load. After an error no barrier: the peers may be stuck in another
            # collective, and torchrun tears the group down.
            # The DDP wrapper of the finished run sits in reference cycles: collect
            # it now, so its reducer lets go of the group before the teardown rather
            # than during interpreter finalisation.
            gc.collect()
            if finished:
                dist.barrier()
            dist.destroy_process_group()


class _Replica(torch.nn.Module):
    """What DDP wraps: ``forward(name, ...)`` runs ``model.<name>(...)``, so that a
    loss function may call a method such as ``model.loss(...)`` and still pass
    through DDP's forward, which arms the gradient all-reduce."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.module, method)(*args, **kwargs)


def _own_method(module: torch.nn.Module, name: str) -> bool:
    """``name`` is a method of the model's own classes (not one of ``nn.Module``'s)."""
    for cls in type(module).__mro__:
        if cls is torch.nn.Module:
            return False
        if name in vars(cls):
            return callable(vars(cls)[name])
    return False


class _DDPModel:
    """The model that ``Task.loss_fn`` receives under DDP: calling it, or calling a
    method of the model's class (``model.loss(...)``), goes through DDP's forward;
    anything else (attributes, ``nn.Module`` methods) is the model's own."""

    def __init__(self, ddp: torch.nn.Module, module: torch.nn.Module) -> None:
        self._ddp, self._module = ddp, module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ddp("__call__", *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if _own_method(self._module, name):
            return lambda *args, **kwargs: self._ddp(name, *args, **kwargs)
        return getattr(self._module, name)


def _rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    return {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _set_rng_state(state: dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half of one


def _progress_bar(total: int | None, initial: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)


def train(
    task: Task | str,
    minutes: float = 10.0,
    device: str | torch.device = "cpu",
    seed: int = 0,
    max_steps: int | None = None,
    log: Callable[[str], None] | None = print,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    sync_bn: bool | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``task`` for ``minutes`` (or ``max_steps``) and evaluate it.

    Args:
        task: a :class:`Task` or the name of a registered one.
        minutes: time budget of the whole run, including the time spent before a
            resume; rank 0's clock decides.
        device: ``"cpu"`` or ``"cuda"``; under torchrun a CUDA rank uses GPU ``LOCAL_RANK``.
        seed: model initialisation seed (same on every rank); rank ``r`` draws
            samples with :func:`rank_seed` ``(seed, r)``.
        max_steps: stop after this many optimiser steps (counted from the very
            first step of the run, so a resumed run stops at the same step).
        log: where rank 0's text lines go (``None``: silent, no progress bar).
        checkpoint_dir: write ``<dir>/<task>.pt`` every ``checkpoint_every``
            steps and at the end (rank 0); ``None``: no checkpoints.
        resume: continue from ``<dir>/<task>.pt`` when it exists (starts from
            scratch, saying so, when it does not).
        sync_bn: convert BatchNorm layers to ``SyncBatchNorm`` (needs CUDA and
            more than one process); ``None``: only then, automatically.
        progress: show a tqdm progress bar on rank 0 (when ``log`` is set).
    """
    if isinstance(task, str):
        if task not in TASKS:
            raise ValueError(f"task: unknown {task!r}; choose from {sorted(TASKS)}")
        task = TASKS[task]
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every: expected >= 1, got {checkpoint_every}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume: needs checkpoint_dir")
    ctx = _Dist(torch.device(device))
    finished = False
    try:
        result = _train(task, ctx, minutes, seed, max_steps, log if ctx.main else None, checkpoint_dir,
                        checkpoint_every, resume, sync_bn, progress)
        finished = True
        return result
    finally:
        ctx.close(finished)


def _train(task: Task, ctx: _Dist, minutes: float, seed: int, max_steps: int | None,
           log: Callable[[str], None] | None, checkpoint_dir, checkpoint_every: int, resume: bool,
           sync_bn: bool | None, progress: bool) -> TrainResult:
    device = ctx.device
    torch.manual_seed(seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    model = task.build_model().to(device)
    if sync_bn is None:
        sync_bn = ctx.world > 1 and device.type == "cuda"
    if sync_bn:
        if device.type != "cuda":
            raise ValueError("sync_bn: SyncBatchNorm needs CUDA tensors (torch supports no CPU SyncBatchNorm)")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=task.lr, weight_decay=task.weight_decay)
    # per-rank streams: different samples and dropout masks on every rank
    generator = torch.Generator().manual_seed(rank_seed(seed, ctx.rank))
    torch.manual_seed(rank_seed(seed, ctx.rank))
    if device.type == "cuda":
        torch.cuda.manual_seed(rank_seed(seed, ctx.rank))
    step, elapsed_before = 0, 0.0
    history: list[tuple[int, float, dict[str, float]]] = []
    path = checkpoint_path(checkpoint_dir, task.name) if checkpoint_dir is not None else None

    if resume:
        state = None
        if ctx.main and path is not None and path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=False)
        state = ctx.broadcast(state)  # one reader, so the file only has to exist on rank 0's machine
        if state is None:
            if log:
                log(f"no checkpoint at {path}; starting from scratch")
        else:
            if state["task"] != task.name or state["world_size"] != ctx.world:
                raise ValueError(
                    f"resume: {path} holds task {state['task']!r} trained by {state['world_size']} process(es); "
                    f"this run is {task.name!r} with {ctx.world}: resume with the same --nproc"
                )
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            _set_rng_state(state["rng"][ctx.rank], generator, device)
            step, elapsed_before, history = state["step"], state["elapsed"], list(state["history"])
            if log:
                log(f"resumed {task.name} from {path} at step {step} ({elapsed_before / 60:.1f} min done)")

    train_model: Any = model
    if ctx.world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            _Replica(model),
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=task.find_unused_parameters,
        )
        train_model = _DDPModel(ddp, model)

    eval_seconds = 0.0

    def evaluate() -> dict[str, float]:
        # rank 0 only; its own RNG fork so that evaluating never shifts the training streams
        nonlocal eval_seconds
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            model.eval()
            with torch.no_grad():
                metrics = task.evaluate(model, device)
        eval_seconds += time.perf_counter() - t0
        return metrics

    def save(elapsed: float) -> None:
        rng = ctx.gather(_rng_state(generator, device))  # collective: every rank takes part
        if ctx.main and path is not None:
            _save_atomic({
                "format": 1, "task": task.name, "world_size": ctx.world, "seed": seed, "step": step,
                "elapsed": elapsed, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": rng, "history": history,
            }, path)

    budget = minutes * 60.0
    start = time.perf_counter()
    first_step = step

    def clock() -> float:
        return elapsed_before + time.perf_counter() - start

    def should_stop() -> bool:
        return (max_steps is not None and step >= max_steps) or clock() >= budget

    def budget_done() -> float:
        done = clock() / budget if budget > 0 else 1.0
        if max_steps:
            done = max(done, step / max_steps)
        return min(max(done, 0.0), 1.0)

    def set_learning_rate(fraction_done: float) -> None:
        if task.lr_schedule == "cosine":
            # cosine decay to 5% of the base rate over the time (or step) budget:
            # a constant rate leaves the CTC models oscillating a few percent around
            # their plateau at the end of a short run
            factor = 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * fraction_done))
            for group in optimizer.param_groups:
                group["lr"] = task.lr * factor

    _, stop, fraction = ctx.agree(0.0, should_stop(), budget_done())
    bar = _progress_bar(max_steps, step, task.name) if (log and progress) else None
    emit = (bar.write if bar is not None else log) if log else None
    losses: list[float] = []
    observe_loss = getattr(model, "observe_loss", None)
    while not stop:
        model.train()
        batch = _to_device(task.batch(generator, step), device)
        loss = task.loss_fn(train_model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if task.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), task.grad_clip)
        set_learning_rate(fraction)
        optimizer.step()
        step += 1
        mean_loss, stop, fraction = ctx.agree(loss, should_stop(), budget_done())
        losses.append(mean_loss)
        if observe_loss is not None:
            observe_loss(mean_loss)  # e.g. a rectifier's loss-gated warm-up; the same value on every rank
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
        if step % task.eval_every == 0 and ctx.main:
            metrics = evaluate()
            history.append((step, clock(), metrics))
            if emit:
                emit(f"step {step} loss {mean_loss:.4f} " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if path is not None and (stop or step % checkpoint_every == 0):
            save(clock())
    if bar is not None:
        bar.close()
    train_seconds = time.perf_counter() - start - eval_seconds  # throughput of the training steps alone
    seconds = clock()
    metrics = ctx.broadcast(evaluate() if ctx.main else None)
    history.append((step, seconds, metrics))
    done = step - first_step
    steps_per_s = done / train_seconds if train_seconds > 0 else 0.0
    if log:
        if done:
            log(f"throughput: {steps_per_s:.2f} steps/s, {steps_per_s * task.batch_size * ctx.world:.1f} samples/s "
                f"({ctx.world} process{'es' if ctx.world > 1 else ''} x batch {task.batch_size})")
        where = str(device) if ctx.world == 1 else f"{device.type} ({ctx.world} processes, {dist.get_backend()})"
        log(f"{task.name}: {task.metric} {metrics[task.metric]:.4f} after {step} steps, {seconds / 60:.1f} min on {where}")
    model.eval()
    return TrainResult(task.name, step, seconds, metrics, history, ctx.world, losses, model,
                       steps_per_s, steps_per_s * task.batch_size * ctx.world)
