"""The report of ``python -m visionops bench``: a table of median times and the
ratio peer / visionops, written as Markdown with a PNG bar chart."""

from __future__ import annotations

import datetime
import os
import platform
import re
from dataclasses import dataclass
from typing import Iterable, Optional

import torch

from . import Case, family_cases
from .timing import device_bandwidth, median_time


@dataclass
class Row:
    case: Case
    ours: float
    peer: Optional[float]

    @property
    def ratio(self) -> Optional[float]:
        return None if self.peer is None else self.peer / self.ours


def machine_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device).replace(" ", "-")
    cpu = platform.processor() or platform.machine()
    return f"cpu-{os.cpu_count()}cores-{cpu}".replace(" ", "-")


def run_cases(cases: Iterable[Case], progress=None) -> list[Row]:
    rows = []
    for case in cases:
        fns = case.setup()
        ours = median_time(fns["visionops"], case.device)
        peer_fn = fns.get(case.peer)
        peer = median_time(peer_fn, case.device) if peer_fn is not None else None
        rows.append(Row(case, ours, peer))
        if progress is not None:
            progress.update(1)
        del fns
    return rows


def _fmt_time(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e3:.2f} ms"


def format_table(rows: list[Row], bandwidth: Optional[float]) -> str:
    header = "| case | device | peer | visionops | peer time | peer / visionops |"
    sep = "|---|---|---|---|---|---|"
    if bandwidth:
        header += " roofline |"
        sep += "---|"
    lines = [header, sep]
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        line = f"| {r.case.family}/{r.case.name} | {r.case.device} | {r.case.peer} | {_fmt_time(r.ours)} | {_fmt_time(r.peer)} | {ratio} |"
        if bandwidth:
            frac = "-" if not r.case.bytes_moved else f"{r.case.bytes_moved / r.ours / bandwidth:.0%}"
            line += f" {frac} |"
        lines.append(line)
    return "\n".join(lines)


def plot(rows: list[Row], path: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in rows if r.ratio is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    names = [f"{r.case.family}/{r.case.name} ({r.case.device})" for r in rows]
    ratios = [r.ratio for r in rows]
    ax.barh(names, ratios, color=["tab:green" if v >= 1 else "tab:red" for v in ratios])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("peer time / visionops time (higher is better)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_report(
    families: list[str],
    device: str,
    quick: bool,
    out_dir: Optional[str],
    progress_factory=None,
    name_filter: Optional[str] = None,
) -> tuple[str, list[Row], Optional[str], Optional[str]]:
    """Runs every case (whose name contains ``name_filter``, if given), returns
    (markdown, rows, markdown path, png path)."""
    cases = [c for f in families for c in family_cases(f, device, quick) if not name_filter or name_filter in c.name]
    progress = progress_factory(total=len(cases)) if progress_factory else None
    rows = run_cases(cases, progress)
    if progress is not None:
        progress.close()
    bandwidth = device_bandwidth(device)
    table = format_table(rows, bandwidth)
    machine = machine_name(device)
    date = datetime.date.today().isoformat()
    header = (
        f"# visionops benchmark: {machine}, {date}\n\n"
        f"visionops {_version()}, torch {torch.__version__}, threads {torch.get_num_threads()}"
        + (f", measured copy bandwidth {bandwidth / 1e9:.0f} GB/s" if bandwidth else "")
        + ("" if not quick else ", quick sizes")
        + "\n\nMedian time of one call; ratio > 1 means visionops is faster.\n\n"
    )
    markdown = header + table + "\n"
    md_path = png_path = None
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        from . import FAMILIES

        scope = "" if sorted(families) == sorted(FAMILIES) else "-" + "-".join(families)
        scope += f"-{re.sub(r'[^A-Za-z0-9_.]+', '_', name_filter)}" if name_filter else ""
        stem = os.path.join(out_dir, f"{machine}-{date}{scope}{'-quick' if quick else ''}")
        md_path = stem + ".md"
        with open(md_path, "w") as f:
            f.write(markdown)
        png_path = plot(rows, stem + ".png")
    return markdown, rows, md_path, png_path


def _version() -> str:
    import visionops

    return visionops.__version__
