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
    from visionops.benchmarks.timing import keep_freed_memory

    keep_freed_memory()  # no page faults of recycled memory in the timings
    status = 0
    for device in _devices(args.device):
        markdown, _, md_path, png_path = run_report(
            families, device, args.quick, args.out, _progress(f"bench {device}"), getattr(args, "cases", None)
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
        if result.model is not None:
            from visionops.data import Alphabet, captchas

            sample = captchas(6, torch.Generator().manual_seed(123))
            guesses = Alphabet().decode_batch(result.model.eval().predict(sample.images))
            print("  truth -> read: " + ", ".join(f"{t} -> {g}" for t, g in zip(sample.texts, guesses)))
    return status


def _die_with_parent(sig: int) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (no-op elsewhere).

    The launcher -> torchrun -> worker chain must not leave orphans training (and
    overwriting checkpoints) when a process above them is killed with SIGKILL.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _launch_torchrun(args: argparse.Namespace) -> int:
    """Re-run this very command line under ``torch.distributed.run`` with ``--nproc`` workers."""
    import signal
    import subprocess

    import visionops

    if args.device.startswith("cuda"):
        if not torch.cuda.is_available() or torch.cuda.device_count() < args.nproc:
            print(f"--nproc {args.nproc} --device cuda needs {args.nproc} GPUs, found "
                  f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}", file=sys.stderr)
            return 2
    # the workers get this command line minus --nproc (torchrun's parser would take it for --nproc-per-node;
    # the workers would ignore it anyway: they see WORLD_SIZE)
    worker_argv, skip = [], False
    for a in args.raw_argv:
        if skip or a == "--nproc" or a.startswith("--nproc="):
            skip = a == "--nproc"
            continue
        worker_argv.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "--module", "visionops", *worker_argv]
    env = dict(os.environ)
    # workers must import this same visionops, even when it was found through sys.path edits
    root = os.path.dirname(os.path.dirname(os.path.abspath(visionops.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.Popen(cmd, env=env, preexec_fn=lambda: _die_with_parent(signal.SIGTERM))

    def forward(signum, _frame):
        proc.send_signal(signum)  # torchrun stops its workers on SIGTERM / SIGINT

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread: no forwarding, PDEATHSIG still applies
            pass
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_train(args: argparse.Namespace) -> int:
    import visionops.models  # noqa: F401  (registers the tasks)
    from visionops.training import TASK_MODULES_ENV, TASKS, load_task_modules, train

    modules = [m for m in os.environ.get(TASK_MODULES_ENV, "").replace(",", os.pathsep).split(os.pathsep) if m]
    load_task_modules(modules + (args.task_module or []))
    if args.task not in TASKS:
        print(f"unknown task {args.task!r}; choose from {sorted(TASKS)}", file=sys.stderr)
        return 2
    if args.nproc < 1:
        print(f"--nproc: expected >= 1, got {args.nproc}", file=sys.stderr)
        return 2
    if args.sync_bn and not args.device.startswith("cuda"):
        print("--sync-bn needs --device cuda (torch has no CPU SyncBatchNorm)", file=sys.stderr)
        return 2
    if args.resume and not args.checkpoint_dir:
        print("--resume needs --checkpoint-dir", file=sys.stderr)
        return 2
    if args.checkpoint_every < 1:
        print(f"--checkpoint-every: expected >= 1, got {args.checkpoint_every}", file=sys.stderr)
        return 2
    task = TASKS[args.task]
    if args.curriculum_steps is not None:
        import dataclasses
        import inspect

        if args.curriculum_steps < 0:
            print(f"--curriculum-steps: expected >= 0, got {args.curriculum_steps}", file=sys.stderr)
            return 2
        if args.curriculum_steps and "difficulty" not in inspect.signature(task.make_batch).parameters:
            print(f"--curriculum-steps: task {args.task!r} has no data difficulty to ramp", file=sys.stderr)
            return 2
        task = dataclasses.replace(task, curriculum_steps=args.curriculum_steps)
    in_worker = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.nproc > 1 and not in_worker:
        return _launch_torchrun(args)
    if in_worker and "TORCHELASTIC_RUN_ID" in os.environ:
        import signal

        _die_with_parent(signal.SIGKILL)  # the torchrun agent died: stop rather than train on alone
        if os.getppid() == 1:
            return 1
    if in_worker:
        import faulthandler

        faulthandler.enable()  # a worker that aborts prints where (Python stacks of all threads)
    sync_bn = True if args.sync_bn else (False if args.no_sync_bn else None)
    train(task, minutes=args.minutes, device=args.device, seed=args.seed, max_steps=args.max_steps,
          checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every, resume=args.resume,
          sync_bn=sync_bn)
    if in_worker:
        # The work is done and saved (train() tore the process group down). A torchrun
        # worker leaves without interpreter finalisation: a 2-process gloo run in CI once
        # aborted there after finishing ("terminate called without an active exception",
        # SIGABRT), which torchrun reports as a failed run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
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
    p.add_argument("--cases", help="only the cases whose name contains this text (e.g. pw1x1)")
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
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine, launched with torchrun (DDP: gloo on CPU, "
                        "NCCL with one GPU each on CUDA); the batch size is per process. Under your own "
                        "torchrun (several machines) leave it out: the workers see WORLD_SIZE")
    p.add_argument("--checkpoint-dir", default=None,
                   help="write DIR/TASK.pt (model, optimiser, step, RNG states) every --checkpoint-every steps "
                        "and at the end (default: no checkpoints)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default 100)")
    p.add_argument("--curriculum-steps", type=int, default=None, metavar="N",
                   help="ramp the data's difficulty (the text-line tasks' warp strength) from 0 to full over "
                        "the first N steps; 0: full from the start (default: the task's own, 1500 for the "
                        "text-line tasks)")
    p.add_argument("--resume", action="store_true",
                   help="continue from DIR/TASK.pt (same --nproc); starts from scratch when there is none")
    bn = p.add_mutually_exclusive_group()
    bn.add_argument("--sync-bn", action="store_true",
                    help="convert BatchNorm to SyncBatchNorm (CUDA only; default: on for CUDA with --nproc > 1)")
    bn.add_argument("--no-sync-bn", action="store_true", help="keep per-process BatchNorm statistics")
    p.add_argument("--task-module", action="append", metavar="MODULE",
                   help="import this module (dotted name or .py path) first, for tasks it registers; "
                        "repeatable; also read from $VISIONOPS_TASK_MODULES (os.pathsep/comma separated)")
    p.set_defaults(func=cmd_train)

    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw_argv)
    args.raw_argv = raw_argv
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
