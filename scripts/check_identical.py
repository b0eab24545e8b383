"""Do the evaluator's stored rows stay bit-identical across a refactor? One small evaluate, compared.

The same small evaluate as ``tests/reference/identical_rows.json`` was made with (issue 18, before the
execution layer moved into ``nas_proxy.plan``): synthetic 28x28 data, five candidates (two that
fuse, a BatchNorm one of the same group, a wide max-pooled one, a LayerNorm one), two seeds, a
proxy (with a learning curve), early stopping and the whole set (with a curve), under four
execution settings:

- ``auto``: one process, the default plan (on a CPU the seeds of fusing candidates stacked);
- ``seeds``: every candidate's seeds stacked (``batch_seeds=True``);
- ``groups``: candidates of one depth, width and pooling stacked (``batch_candidates=True``);
- ``workers``: two loky worker processes, the default plan (their larger micro-batches).

Every row field is compared exactly (accuracy, steps, status, params, reason, curve values),
except the timing fields (``seconds``, ``started_at``, ``finished_at``)::

    python scripts/check_identical.py                 # compare with the committed reference
    python scripts/check_identical.py --write         # (re)make the reference with this code

Float results depend on the CPU and the torch build, so the reference records both; another
machine compares against a reference it made itself (``--write`` before the change).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from nas_proxy.data import Split, make_synthetic
from nas_proxy.evaluate import early_stopping_sources, evaluate, full_source, proxy_source
from nas_proxy.proxies import get_builder
from nas_proxy.store import ResultsStore
from nas_proxy.train import TrainConfig

REFERENCE = Path(__file__).resolve().parent.parent / "tests" / "reference" / "identical_rows.json"
CANDIDATES = (
    "ConvNet-D2-W8-AR-IN-AP",
    "ConvNet-D2-W8-AL-GN-AP",
    "ConvNet-D2-W8-AS-BN-AP",
    "ConvNet-D1-W32-AR-IN-MP",
    "ConvNet-D1-W4-AR-LN-NP",
)
SEEDS = (0, 1)
VARIANTS: dict[str, dict[str, Any]] = {
    "auto": {},
    "seeds": {"batch_seeds": True},
    "groups": {"batch_candidates": True},
    "workers": {"n_jobs": 2},
}
TIMING = ("seconds", "started_at", "finished_at")


def host() -> dict[str, str]:
    """What float results depend on: the CPU (model and flags) and the torch build."""
    try:
        lines = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith(("model name", "flags"))]
    except OSError:
        lines = [platform.processor() or platform.machine()]
    cpu = hashlib.sha256("\n".join(dict.fromkeys(lines)).encode()).hexdigest()[:16]
    return {"cpu": cpu, "torch": torch.__version__, "machine": platform.machine()}


def _data() -> tuple[Split, Split]:
    return make_synthetic(num_classes=10, train_per_class=30, test_per_class=50, seed=0)


def run(variant: str, out: Path) -> list[dict[str, Any]]:
    """The rows of one variant's evaluate, timing fields left out, in key order."""
    torch.set_num_threads(1)  # a process's float sums depend on its thread count
    train, test = _data()
    proxy = proxy_source(get_builder("random", ipc=10, seed=0).build(train), TrainConfig(epochs=4, curve=(1, 2, 4)))
    whole = TrainConfig(epochs=2, curve=(1, 2), curve_steps=(1,))
    sources = [proxy, *early_stopping_sources([proxy], train, whole), full_source(train, whole)]
    evaluate(list(CANDIDATES), sources, test, out_dir=out, seeds=SEEDS, progress=False, **VARIANTS[variant])
    rows = []
    for row in sorted(ResultsStore(out).rows(), key=lambda r: r.key):
        data = json.loads(row.to_json())
        rows.append({k: v for k, v in data.items() if k not in TIMING})
    return rows


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def compare(want: list[dict[str, Any]], got: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """Rows compared, and one line per field that differs."""
    diffs: list[str] = []
    if len(want) != len(got):
        diffs.append(f"{len(want)} reference rows, {len(got)} now")
    for w, g in zip(want, got, strict=False):
        key = f"{w.get('arch_id')}/{w.get('source_id')}/s{w.get('seed')}"
        for field in sorted(set(w) | set(g)):
            if not _same(w.get(field), g.get(field)):
                diffs.append(f"{key} {field}: {w.get(field)!r} -> {g.get(field)!r}")
    return len(got), diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="make the reference with this code")
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="identical-") as tmp:
        rows = {v: run(v, Path(tmp) / v) for v in args.variants}
    if args.write:
        args.reference.parent.mkdir(parents=True, exist_ok=True)
        args.reference.write_text(json.dumps({"host": host(), "variants": rows}, indent=1) + "\n")
        print(f"wrote {args.reference}: {sum(map(len, rows.values()))} rows")
        return 0
    ref = json.loads(args.reference.read_text())
    if ref["host"] != host():
        print(f"note: the reference was made on {ref['host']}, this is {host()}: floats may differ")
    print(f"{'variant':<8} {'rows':>5} {'fields':>7} {'differ':>7}")
    failed = 0
    for variant, got in rows.items():
        n, diffs = compare(ref["variants"][variant], got)
        fields = sum(len(r) for r in got)
        print(f"{variant:<8} {n:>5} {fields:>7} {len(diffs):>7}")
        for line in diffs[:20]:
            print(f"    {line}")
        failed += bool(diffs)
    print("identical" if not failed else f"{failed} variant(s) differ")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
