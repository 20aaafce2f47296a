"""Training harness behind ``python -m visionops train TASK``.

A model family registers a :class:`Task` (how to build the model, draw a
synthetic batch, compute the loss and evaluate on a held-out set); the harness
owns everything else: device placement, the optimiser, the time budget,
progress output and the final metric line. Keeping the loop here, once, is
what lets the distributed (torchrun/DDP) and checkpoint/resume logic apply to
every model alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["Task", "TASKS", "register_task", "train", "TrainResult"]


@dataclass
class Task:
    """One trainable reference model on synthetic data.

    ``make_batch(generator, batch_size)`` returns a tuple on the CPU, drawn only
    from ``generator`` (so every rank can draw different, reproducible samples);
    ``loss_fn(model, batch)`` receives that batch already moved to the device;
    ``evaluate(model, device)`` scores the model (in eval mode) on a held-out set
    drawn from a fixed seed and returns named metrics, ``metric`` naming the one
    that the final line reports.
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


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    TASKS[task.name] = task
    return task


@dataclass
class TrainResult:
    task: str
    steps: int
    seconds: float
    metrics: dict[str, float]
    history: list[tuple[int, float, dict[str, float]]]  # (step, seconds, metrics)


def _to_device(batch: tuple, device: torch.device) -> tuple:
    return tuple(b.to(device, non_blocking=True) if isinstance(b, torch.Tensor) else b for b in batch)


def train(
    task: Task | str,
    minutes: float = 10.0,
    device: str | torch.device = "cpu",
    seed: int = 0,
    max_steps: int | None = None,
    log: Callable[[str], None] | None = print,
) -> TrainResult:
    """Train ``task`` for ``minutes`` (or ``max_steps``) and evaluate it."""
    if isinstance(task, str):
        if task not in TASKS:
            raise ValueError(f"task: unknown {task!r}; choose from {sorted(TASKS)}")
        task = TASKS[task]
    device = torch.device(device)
    torch.manual_seed(seed)
    model = task.build_model().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=task.lr, weight_decay=task.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    budget = minutes * 60.0
    start = time.perf_counter()
    history: list[tuple[int, float, dict[str, float]]] = []
    step = 0
    while (max_steps is None or step < max_steps) and time.perf_counter() - start < budget:
        model.train()
        batch = _to_device(task.make_batch(generator, task.batch_size), device)
        loss = task.loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if task.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), task.grad_clip)
        optimizer.step()
        step += 1
        if step % task.eval_every == 0:
            metrics = task.evaluate(model, device)
            history.append((step, time.perf_counter() - start, metrics))
            if log:
                log(f"step {step} loss {loss.item():.4f} " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    metrics = task.evaluate(model, device)
    seconds = time.perf_counter() - start
    history.append((step, seconds, metrics))
    if log:
        log(f"{task.name}: {task.metric} {metrics[task.metric]:.4f} after {step} steps, {seconds / 60:.1f} min on {device}")
    return TrainResult(task.name, step, seconds, metrics, history)
