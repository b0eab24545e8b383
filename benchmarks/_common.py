"""Shared helpers of the side-by-side benchmarks: the machine in words, RESULT lines, records.

Every benchmark ends by printing one line per comparison,
``RESULT <name> ratio=<reference seconds / ours> equal=yes|no``, and writes a markdown and a
JSON record to ``results/benchmarks/<benchmark>-<machine>.{md,json}`` naming the machine, so
figures from different hosts never overwrite each other.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results" / "benchmarks"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15-minute load averages: a busy host makes every timing slower and noisier."""
    try:
        return os.getloadavg()
    except OSError:
        return None


def machine(device: torch.device) -> dict[str, Any]:
    """Where the seconds were measured: CPU, cores, torch threads and version, device, load."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_average": load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_slug(info: dict[str, Any]) -> str:
    """A file-name-safe name of the host: GPU name on CUDA, else CPU model and core count."""
    name = info.get("gpu") or f"{info['cpu']}-{info['cores']}c"
    return re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")


def describe(info: dict[str, Any]) -> str:
    load = info.get("load_average")
    load_text = "n/a" if load is None else " / ".join(f"{x:.2f}" for x in load)
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    return (
        f"{info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
        f"device {info['device']}{gpu}; load average {load_text} (1/5/15 min)"
    )


@dataclass
class Comparison:
    """One side-by-side figure: reference seconds, ours, and whether the results agree."""

    name: str
    reference_s: float
    ours_s: float
    equal: bool
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.reference_s / self.ours_s if self.ours_s > 0 else float("inf")

    def result_line(self) -> str:
        return f"RESULT {self.name} ratio={self.ratio:.2f} equal={'yes' if self.equal else 'no'}"


def max_relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest ``|a - b|`` relative to ``max |b|``: how far ours is from the reference tensor."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = float("nan")
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def write_record(
    benchmark: str,
    info: dict[str, Any],
    comparisons: list[Comparison],
    settings: dict[str, Any],
    notes: list[str],
    *,
    out_dir: Path = RESULTS_DIR,
    suffix: str = "",
) -> Path:
    """Write ``<benchmark>-<machine><suffix>.md`` and ``.json``; returns the markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{benchmark}-{machine_slug(info)}{suffix}"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(["python", *sys.argv])
    lines = [
        f"# {benchmark}",
        "",
        f"Machine: {describe(info)}  ",
        f"Run: {when}, `{command}`",
        "",
        "| comparison | reference s | ours s | ratio | equal | details |",
        "|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        details = ", ".join(f"{k}={v}" for k, v in c.details.items())
        lines.append(
            f"| {c.name} | {c.reference_s:.2f} | {c.ours_s:.2f} | {c.ratio:.2f}x | {'yes' if c.equal else 'no'} "
            f"| {details} |"
        )
    lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", "```", *(c.result_line() for c in comparisons), "```", ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    record = {
        "benchmark": benchmark,
        "machine": info,
        "when": when,
        "command": command,
        "settings": settings,
        "notes": notes,
        "comparisons": [{**asdict(c), "ratio": c.ratio} for c in comparisons],
    }
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return stem.with_suffix(".md")


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a benchmark's resumable CSV table (none when it does not exist yet)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_csv_row(path: Path, row: dict[str, Any], columns: Sequence[str]) -> None:
    """Append one finished row at once, so an interrupted benchmark keeps what it measured."""
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerow(row)


def record_target(out: Path | None, *, smoke: bool, quick: bool, synthetic: bool) -> tuple[Path, str]:
    """Where a benchmark writes its record, and the file suffix that says how it was run.

    Smoke runs go to the temp folder so they never land in results/ by accident.
    """
    out_dir = out or (Path(tempfile.gettempdir()) / "nas-proxy-benchmarks" if smoke else RESULTS_DIR)
    suffix = "-smoke" if smoke else "-quick" if quick else ""
    suffix += "-synthetic" if synthetic and not smoke else ""
    return out_dir, suffix
