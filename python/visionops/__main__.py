"""Command line: ``python -m visionops {check,bench,demo,train} ...``."""

from __future__ import annotations

import argparse
import os
import sys

import torch


def _devices(requested: str | None) -> list[str]:
    if requested:
        return [requested]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def cmd_check(args: argparse.Namespace) -> int:
    import visionops
    from visionops._check import run_checks

    info = visionops.build_info()
    print("visionops build:", ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"runtime: torch {torch.__version__}, CUDA device: "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    rows, ok = run_checks(_devices(args.device))
    w_op = max([2] + [len(r[0]) for r in rows])
    w_ref = max([9] + [len(r[2]) for r in rows])
    print(f"\n{'op':<{w_op}} {'device':<6} {'reference':<{w_ref}} {'max error':>10} {'tolerance':>10}  result")
    for op, device, ref, err, tol, passed in rows:
        print(f"{op:<{w_op}} {device:<6} {ref:<{w_ref}} {err:>10.2e} {tol:>10.1e}  {'PASS' if passed else 'FAIL'}")
    print(f"\n{sum(r[-1] for r in rows)}/{len(rows)} checks passed")
    return 0 if ok else 1


def _progress(desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return lambda total: tqdm(total=total, desc=desc, unit="case", file=sys.stderr)


def cmd_bench(args: argparse.Namespace) -> int:
    from visionops.benchmarks import FAMILIES
    from visionops.benchmarks.report import run_report

    families = [args.family] if args.family else FAMILIES
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        print(f"unknown family {unknown}; choose from {FAMILIES}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    status = 0
    for device in _devices(args.device):
        markdown, _, md_path, png_path = run_report(
            families, device, args.quick, args.out, _progress(f"bench {device}")
        )
        print(markdown)
        for path in (md_path, png_path):
            if path:
                print(f"wrote {path}")
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    status = cmd_check(argparse.Namespace(device=None))
    print("\nShort side-by-side timing (quick sizes; full run: python -m visionops bench)\n")
    cmd_bench(argparse.Namespace(family=None, device=None, quick=True, out=args.out, threads=None))
    if args.train_minutes > 0:
        import visionops.models  # noqa: F401  (registers the tasks)
        from visionops.training import train

        print(f"\nShowcase: CRNN + visionops CTC on synthetic captchas, {args.train_minutes:g} min on the CPU "
              "(full run: python -m visionops train crnn --minutes 10)\n")
        result = train("crnn", minutes=args.train_minutes, device="cpu")
        print("held-out captchas: " + ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items()))
    return status


def cmd_train(args: argparse.Namespace) -> int:
    import visionops.models  # noqa: F401  (registers the tasks)
    from visionops.training import TASKS, train

    if args.task not in TASKS:
        print(f"unknown task {args.task!r}; choose from {sorted(TASKS)}", file=sys.stderr)
        return 2
    train(args.task, minutes=args.minutes, device=args.device, seed=args.seed, max_steps=args.max_steps)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visionops", description="visionops command line")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="build info + every op against its reference (exit 1 on failure)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="only this device (default: all available)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("bench", help="time every op against its peer; write a Markdown table and a PNG")
    p.add_argument("--family", help="only this op family (default: all)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="only this device (default: all available)")
    p.add_argument("--quick", action="store_true", help="small sizes, for a fast smoke run")
    p.add_argument("--out", default=os.path.join("bench", "results"), help="folder for the .md and .png")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="check, a short benchmark, then a short CRNN training")
    p.add_argument("--out", default=None, help="folder for the benchmark's .md and .png (default: none)")
    p.add_argument("--train-minutes", type=float, default=3.0, help="CRNN showcase training time (0: skip)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a reference model on synthetic data and report its metric")
    p.add_argument("task", help="crnn, stn, rare or rrpn")
    p.add_argument("--minutes", type=float, default=10.0, help="time budget (default 10)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
