"""ctc family benchmarks: forward + backward of the CTC loss against
torch.nn.functional.ctc_loss (its native kernels; on CUDA also its cuDNN path
where cuDNN applies), at the sizes of CRNN-style text recognisers.

``python -m visionops.benchmarks.ctc [--device cuda]`` prints the peak memory
of each case (CUDA: measured with the caching allocator's peak counter; CPU:
the loss' saved and scratch state, computed from the kernels' allocations).
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch

from . import Case

# (name, T, N, C, S): CRNN captcha, a text line, a large (CJK-size) vocabulary,
# and a long sequence with long targets
SIZES = [
    ("captcha", 32, 64, 37, 6),
    ("text_line", 200, 32, 37, 30),
    ("large_vocab", 500, 16, 6000, 60),
    ("long_sequence", 1000, 8, 100, 300),
]
QUICK = {"captcha": (32, 16, 37, 6), "text_line": (100, 8, 37, 20), "large_vocab": (200, 4, 3000, 30),
         "long_sequence": (400, 2, 100, 120)}


def make_inputs(device: str, t: int, n: int, c: int, s: int, cudnn: bool = False, seed: int = 0):
    """log_probs [T, N, C] (leaf, requires grad), padded targets, input and target lengths."""
    g = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(t, n, c, generator=g).log_softmax(2).to(device).requires_grad_(True)
    targets = torch.randint(1, c, (n, s), generator=g)
    target_lengths = torch.randint(max(1, s // 2), s + 1, (n,), generator=g)
    target_lengths[0] = s
    if cudnn:
        # torch takes cuDNN only for CPU int32 targets/lengths, blank 0, all inputs of full length
        input_lengths = torch.full((n,), t, dtype=torch.int32)
        return log_probs, targets.int(), input_lengths, target_lengths.int()
    input_lengths = t - torch.randint(0, max(1, t // 10), (n,), generator=g)
    input_lengths[0] = t
    return log_probs, targets.to(device), input_lengths.to(device), target_lengths.to(device)


def fwd_bwd(fn: Callable, log_probs, targets, input_lengths, target_lengths) -> Callable[[], object]:
    def run():
        loss = fn(log_probs, targets, input_lengths, target_lengths, reduction="mean")
        return torch.autograd.grad(loss, log_probs)

    return run


def _case(device: str, name: str, sizes, cudnn: bool = False) -> Case:
    t, n, c, s = sizes

    def setup():
        import torch.nn.functional as F

        from .. import ops

        inputs = make_inputs(device, t, n, c, s, cudnn=cudnn)
        peer = "torch-cudnn" if cudnn else "torch"
        return {"visionops": fwd_bwd(ops.ctc_loss, *inputs), peer: fwd_bwd(F.ctc_loss, *inputs)}

    # a perfect kernel reads log_probs once and writes the gradient once
    moved = 2 * t * n * c * 4
    suffix = "_cudnn" if cudnn else ""
    return Case("ctc", f"{name}_T{t}_N{n}_C{c}_S{s}_fwd_bwd{suffix}", device, "torch-cudnn" if cudnn else "torch",
                setup, moved)


def cases(device: str, quick: bool = False) -> list[Case]:
    out = []
    for name, t, n, c, s in SIZES:
        sizes = QUICK[name] if quick else (t, n, c, s)
        out.append(_case(device, name, sizes))
        if device.startswith("cuda") and name in ("captcha", "text_line"):
            out.append(_case(device, name, sizes, cudnn=True))
    return out


# ---------------------------------------------------------------- peak memory


def cuda_peak_bytes(run: Callable[[], object], device: str) -> int:
    """Peak allocated bytes of one call above what was allocated before it."""
    run()  # warm up (cuDNN workspaces, allocator)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = run()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return peak


def cpu_state_bytes(t: int, n: int, s: int, impl: str) -> int:
    """Saved + scratch state of the loss beyond log_probs and its gradient
    (float32): visionops keeps log_alpha and O(S) beta rows per thread; torch's
    CPU kernel keeps log_alpha and also materialises log_beta."""
    cells = n * t * (2 * s + 1) * 4
    return cells if impl == "visionops" else 2 * cells


def memory_table(device: str, quick: bool = False) -> str:
    lines = ["| case | device | visionops | torch | torch / visionops |", "|---|---|---|---|---|"]
    for case in cases(device, quick):
        if device.startswith("cuda"):
            fns = case.setup()
            ours = cuda_peak_bytes(fns["visionops"], device)
            theirs = cuda_peak_bytes(fns[case.peer], device)
            del fns
        else:
            t, n, c, s = next((QUICK[k] if quick else (tt, nn, cc, ss))
                              for k, tt, nn, cc, ss in SIZES if case.name.startswith(k))
            ours, theirs = cpu_state_bytes(t, n, s, "visionops"), cpu_state_bytes(t, n, s, "torch")
        lines.append(f"| {case.name} | {device} | {ours / 2**20:.2f} MiB | {theirs / 2**20:.2f} MiB | "
                     f"{theirs / max(ours, 1):.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    import visionops  # noqa: F401  (registers the ops)

    print(memory_table(args.device, args.quick))


if __name__ == "__main__":
    main()
