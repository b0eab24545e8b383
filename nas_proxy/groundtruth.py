"""Whole-data ground truth as a shareable file, like a tabular NAS benchmark.

Training every candidate on the whole data is the expensive part of an evaluation (the paper:
8,604 GPU-minutes for 720 candidates), so its table is exported once and reused:

    <name>.csv    one row per whole-data run: arch_id, seed, status, accuracy, seconds, steps,
                  params, reason, started_at, finished_at, and one column per recorded fidelity
                  of the run's learning curve: accuracy_e<E> (after epoch E), accuracy_s<N>
                  (after N SGD steps), empty where the run had diverged
    <name>.json   the protocol: dataset, space, TrainConfig (and its hash), seeds, candidates,
                  train/test sizes, the fidelity columns, package version, machine, and the CSV's SHA-256

The default name is ``<dataset>-<space>-e<epochs>``. ``nas-proxy evaluate --ground-truth FILE``
copies the rows (with their learning curves) into a new run's store instead of retraining; the
protocol must agree (same dataset and test set) and the file must hold every selected candidate.
Files written before curves existed have no fidelity columns and still load.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from nas_proxy.errors import NasProxyError
from nas_proxy.metrics import curve_steps
from nas_proxy.protocol import RunProtocol, SourceRecord
from nas_proxy.store import STATUSES, RunRow, open_store, write_json_atomic
from nas_proxy.train import TrainConfig, curve_point

GT_FORMAT = 1
GT_COLUMNS: tuple[str, ...] = (
    "arch_id",
    "seed",
    "status",
    "accuracy",
    "seconds",
    "steps",
    "params",
    "reason",
    "started_at",
    "finished_at",
)
DEFAULT_DIR = Path("results") / "groundtruth"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sidecar_path(path: str | Path) -> Path:
    """``x.csv`` -> ``x.json``."""
    return Path(path).with_suffix(".json")


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """Whole-data runs (a DataFrame with :data:`GT_COLUMNS`) and the protocol they were trained under."""

    table: pd.DataFrame
    protocol: dict[str, Any]
    path: Path | None = None

    @property
    def bare(self) -> bool:
        """A table without a protocol (``load_ground_truth(..., bare=True)``): ranks, but no config."""
        return not self.protocol

    @property
    def config(self) -> TrainConfig:
        names = {f.name for f in fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in self.protocol["config"].items() if k in names})

    @property
    def dataset(self) -> str:
        return str(self.protocol["dataset"])

    @property
    def arch_ids(self) -> list[str]:
        return list(dict.fromkeys(self.table["arch_id"].astype(str)))

    def rows_for(self, ids: list[str], *, dataset: str, test_images: int) -> list[RunRow]:
        """The stored rows for ``ids`` as RunRows of source ``full``; raise if the file cannot stand in."""
        where = str(self.path) if self.path else "ground truth"
        if dataset != self.dataset:
            raise NasProxyError(f"{where} is for dataset {self.dataset!r}, not {dataset!r}")
        if int(self.protocol.get("test_images", test_images)) != test_images:
            raise NasProxyError(
                f"{where} was measured on {self.protocol['test_images']} test images, this run has {test_images}"
            )
        have = set(self.arch_ids)
        missing = [i for i in ids if i not in have]
        if missing:
            raise NasProxyError(
                f"{where} lacks {len(missing)} of the {len(ids)} selected candidates (e.g. {missing[0]}); "
                f"select within its {len(have)} candidates or train them with --full"
            )
        cfg_hash = self.config.hash
        wanted = set(ids)
        out = []
        fids = self.fidelities
        per_epoch = self.protocol.get("steps_per_epoch")
        for rec in self.table.to_dict("records"):
            if str(rec["arch_id"]) not in wanted:
                continue
            acc = rec["accuracy"]
            curve = tuple(
                curve_point(f["step"], int(per_epoch or 1), _number(rec.get(f["column"])), math.nan)
                for f in fids
            )
            out.append(
                RunRow(
                    arch_id=str(rec["arch_id"]),
                    source_id="full",
                    seed=int(rec["seed"]),
                    config_hash=cfg_hash,
                    status=str(rec["status"]),
                    accuracy=float("nan")
                    if acc is None or (isinstance(acc, float) and math.isnan(acc))
                    else float(acc),
                    seconds=float(rec["seconds"]),
                    steps=int(rec["steps"]),
                    params=int(rec["params"]),
                    reason=_text(rec.get("reason")),
                    dataset=self.dataset,
                    started_at=_text(rec.get("started_at")),
                    finished_at=_text(rec.get("finished_at")),
                    curve=curve,
                )
            )
        return out

    @property
    def fidelities(self) -> list[dict[str, Any]]:
        """The recorded fidelities: ``{"column", "step", "epoch"}`` each (none in files from before curves)."""
        return [dict(f) for f in self.protocol.get("fidelities", [])]

    def fidelity_column(self, epoch: int) -> str:
        """The CSV column of the accuracy after ``epoch`` epochs; raise listing the recorded ones."""
        if epoch == self.config.epochs:
            return "accuracy"
        for f in self.fidelities:
            if f.get("epoch") == epoch:
                return str(f["column"])
        epochs = {int(f["epoch"]) for f in self.fidelities if f.get("epoch") and float(f["epoch"]).is_integer()}
        valid = sorted(epochs | {self.config.epochs})
        where = str(self.path) if self.path else "ground truth"
        raise NasProxyError(f"{where} has no fidelity of {epoch} epochs; valid: {', '.join(map(str, valid))}")

    def source_description(self) -> SourceRecord:
        """The ``full`` source of a run's protocol when its rows come from this file."""
        p = self.protocol
        return SourceRecord(
            kind="full",
            label="whole data",
            dataset=self.dataset,
            train_images=p.get("train_images"),
            images=p.get("train_images"),
            bytes=p.get("train_bytes", 0),
            config=self.config.fields(),
            config_hash=self.config.hash,
            meta={"ground_truth": {"path": str(self.path) if self.path else None, "csv_sha256": p.get("csv_sha256")}},
        )


def _read_csv(path: Path, columns: tuple[str, ...], hint: str = "") -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype={"arch_id": str, "reason": str, "status": str})
    except (OSError, ValueError) as exc:
        raise NasProxyError(f"{path}: unreadable CSV ({exc})") from exc
    lacking = [c for c in columns if c not in table.columns]
    if lacking:
        raise NasProxyError(f"{path}: missing columns {', '.join(lacking)}{hint}")
    return table


def _number(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    return float(value)


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def default_name(protocol: RunProtocol) -> str:
    """``<dataset>-<space>-e<epochs>``, e.g. ``fashionmnist-convnet720-narrow-e100``."""
    dataset = Path(protocol.dataset or "data").stem
    space = protocol.space or "custom"
    full = protocol.config("full")
    epochs = full.epochs if full is not None and full.epochs is not None else "x"
    return f"{dataset}-{space}-e{epochs}"


def fidelity_name(step: int, per_epoch: int | None) -> str:
    """``accuracy_e4`` for the end of epoch 4, ``accuracy_s100`` for any other step."""
    if per_epoch and step % per_epoch == 0:
        return f"accuracy_e{step // per_epoch}"
    return f"accuracy_s{step}"


def export_ground_truth(run_dir: str | Path, path: str | Path | None = None, *, fidelity: int | None = None) -> Path:
    """Write the whole-data rows of a run directory as ``<path>.csv`` plus its ``.json`` protocol.

    Every fidelity the runs recorded becomes a column; ``fidelity`` (epochs) keeps only that one
    beside the final accuracy.
    """
    # Here, not at the top: the package sets __version__ after importing its modules.
    from nas_proxy import __version__

    store = open_store(run_dir)
    protocol = store.load_protocol() or RunProtocol()
    full = protocol.config("full")
    source = protocol.source("full")
    if full is None or source is None:
        raise NasProxyError(f"{store.root} has no whole-data runs to export (evaluate with --full first)")
    frame = store.frame()
    frame = frame[(frame["source_id"] == "full") & (frame["config_hash"] == full.hash)]
    if frame.empty:
        raise NasProxyError(f"{store.root} has no whole-data runs to export (evaluate with --full first)")
    frame = frame.sort_values(["arch_id", "seed"], kind="stable")
    per_epoch = source.steps_per_epoch
    steps = curve_steps(frame)
    final_step = int(frame["steps"].max()) if len(frame) else 0
    fids: list[dict[str, Any]] = [
        {"column": fidelity_name(st, per_epoch), "step": st, "epoch": round(st / per_epoch, 4) if per_epoch else None}
        for st in steps
        if st < final_step
    ]
    if fidelity is not None:
        wanted = [f for f in fids if f["epoch"] == fidelity]
        if not wanted and fidelity != full.epochs:
            valid = sorted({int(f["epoch"]) for f in fids if f["epoch"] and float(f["epoch"]).is_integer()})
            raise NasProxyError(
                f"{store.root}: no whole-data fidelity of {fidelity} epochs; valid: "
                f"{', '.join(map(str, [*valid, full.epochs]))}"
            )
        fids = wanted
    columns = list(GT_COLUMNS)
    frame = frame.copy()
    for f in fids:
        frame[f["column"]] = [_curve_accuracy(c, int(f["step"])) for c in frame["curve"]]
        columns.append(str(f["column"]))
    out = Path(path) if path is not None else DEFAULT_DIR / f"{default_name(protocol)}.csv"
    if out.suffix != ".csv":
        out = out.with_name(out.name + ".csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    frame.loc[:, columns].to_csv(tmp, index=False)
    tmp.replace(out)
    config = dict(full.values)
    meta = {
        "format": GT_FORMAT,
        "dataset": protocol.dataset,
        "space": protocol.space,
        "epochs": config.get("epochs"),
        "config": config,
        "config_hash": full.hash,
        "seeds": sorted({int(s) for s in frame["seed"]}),
        "candidates": int(frame["arch_id"].nunique()),
        "rows": len(frame),
        "statuses": {s: int((frame["status"] == s).sum()) for s in STATUSES},
        "train_images": source.train_images,
        "train_bytes": source.bytes,
        "test_images": protocol.test_images,
        "steps_per_epoch": per_epoch,
        "fidelities": fids,
        "in_channels": protocol.in_channels,
        "image_size": protocol.image_size,
        "num_classes": protocol.num_classes,
        "package_version": __version__,
        "machine": {"host": platform.node(), "platform": platform.platform(), "processor": platform.processor()},
        "devices": protocol.devices,
        "from_run": str(store.root),
        "csv": out.name,
        "csv_sha256": _sha256(out),
    }
    write_json_atomic(sidecar_path(out), meta)
    return out


def _curve_accuracy(curve: Any, step: int) -> float:
    for p in curve or ():
        if int(p["step"]) == step:
            return math.nan if p.get("accuracy") is None else float(p["accuracy"])
    return math.nan


BARE_COLUMNS: tuple[str, ...] = ("arch_id", "accuracy")


def load_ground_truth(path: str | Path, *, bare: bool = False) -> GroundTruth:
    """Read and check a ground-truth CSV and its JSON sidecar; every error names the file.

    The one reader of ground-truth files (the evaluator's ``--ground-truth``, the search's ranks).
    A file with a sidecar is always checked in full: the sidecar's fields, the CSV against its
    SHA-256, the columns, the statuses, the config against its hash. ``bare=True`` also takes a
    CSV without a sidecar, a table from elsewhere (a published benchmark): it needs only
    ``arch_id`` and ``accuracy`` (``status`` optional), and its protocol is empty
    (:attr:`GroundTruth.bare`), so it can rank candidates but not stand in for whole-data runs.
    """
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".csv")
    if not path.is_file():
        raise NasProxyError(f"ground-truth file {str(path)!r} does not exist")
    side = sidecar_path(path)
    if bare and not side.is_file():
        return GroundTruth(_read_csv(path, BARE_COLUMNS, f" (needs {', '.join(BARE_COLUMNS)})"), {}, path)
    if not side.is_file():
        raise NasProxyError(f"{path}: its protocol file {side.name} is missing (export writes both)")
    try:
        protocol = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise NasProxyError(f"{side}: unreadable protocol ({exc})") from exc
    if not isinstance(protocol, dict):
        raise NasProxyError(f"{side}: protocol must be a JSON object")
    missing = [k for k in ("dataset", "config", "config_hash", "csv_sha256") if k not in protocol]
    if missing:
        raise NasProxyError(f"{side}: protocol lacks {', '.join(missing)}")
    if _sha256(path) != protocol["csv_sha256"]:
        raise NasProxyError(f"{path}: content does not match the SHA-256 in {side.name} (edited or truncated)")
    table = _read_csv(path, GT_COLUMNS)
    bad = sorted(set(table["status"]) - set(STATUSES))
    if bad:
        raise NasProxyError(f"{path}: unknown status {bad[0]!r}; valid: {', '.join(STATUSES)}")
    gt = GroundTruth(table, protocol, path)
    try:
        cfg_hash = gt.config.hash
    except (TypeError, NasProxyError) as exc:
        raise NasProxyError(f"{side}: bad training config ({exc})") from exc
    if cfg_hash != protocol["config_hash"]:
        raise NasProxyError(f"{side}: config does not match its hash (made by another nas-proxy version?)")
    return gt
