"""The results store: one append-only JSON-lines file of training runs per run directory.

Layout of a run directory::

    runs.jsonl      one RunRow per training run, appended and fsynced as each run finishes
    scores.jsonl    one ScoreRow per (ranker, candidate): training-free rankers (zero-cost scores)
    protocol.json   what the rows mean: dataset, training configs, sources (proxy manifests), invocations

Why JSON lines: a row is written whole with one ``write`` and then fsynced, so Ctrl-C or a kill
loses nothing that finished. A kill in the middle of a write leaves at most one torn last line:
readers skip it with a warning, and the next writer cuts it off before appending. A rerun reads
the keys already stored and trains only what is missing.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from nas_proxy.errors import NasProxyError
from nas_proxy.lock import LOCK_NAME, Holder, check_free, exclusive
from nas_proxy.protocol import RunProtocol

RUNS_FILE = "runs.jsonl"
SCORES_FILE = "scores.jsonl"
PROTOCOL_FILE = "protocol.json"

STATUSES: tuple[str, ...] = ("ok", "diverged", "failed")
# A training-free score is 'overflow' when the ranker met a non-finite value (nas_proxy.zero_cost).
SCORE_STATUSES: tuple[str, ...] = ("ok", "overflow", "failed")

# (arch_id, source_id, seed, config_hash): a training run is done when its key is stored.
RunKey = tuple[str, str, int, str]
# (ranker, arch_id, seed)
ScoreKey = tuple[str, str, int]


def now_iso() -> str:
    """UTC wall-clock time with milliseconds: rows are ordered and wall time is measured with it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class RunRow:
    """One training run of one candidate on one training source.

    ``accuracy`` is test accuracy in [0, 1] (NaN unless ``status == "ok"``); ``seconds`` is time
    spent training (the paper's time cost), ``started_at``/``finished_at`` bracket the whole task
    (build, train, test) and give wall time. ``curve`` is the run's learning curve when its config
    asked for one: points ``{"step", "epoch", "accuracy", "loss"}`` (None where the run had
    diverged); rows written before curves existed have none.
    """

    arch_id: str
    source_id: str
    seed: int
    config_hash: str
    status: str
    accuracy: float
    seconds: float
    steps: int
    params: int
    reason: str = ""
    dataset: str = ""
    started_at: str = ""
    finished_at: str = ""
    curve: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise NasProxyError(f"run status must be one of {', '.join(STATUSES)}, got {self.status!r}")
        object.__setattr__(self, "curve", tuple(dict(p) for p in self.curve))

    @property
    def key(self) -> RunKey:
        return (self.arch_id, self.source_id, self.seed, self.config_hash)

    def to_json(self) -> str:
        data = asdict(self)
        # JSON has no NaN: a missing accuracy is null.
        if isinstance(self.accuracy, float) and math.isnan(self.accuracy):
            data["accuracy"] = None
        if not self.curve:
            del data["curve"]  # rows without a curve stay as they were written before curves existed
        else:
            data["curve"] = [dict(p) for p in self.curve]
        return json.dumps(data, sort_keys=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRow:
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in data.items() if k in names}
        acc = kept.get("accuracy")
        kept["accuracy"] = float("nan") if acc is None else float(acc)
        kept["seed"] = int(kept["seed"])
        kept["steps"] = int(kept.get("steps", 0))
        kept["params"] = int(kept.get("params", 0))
        kept["seconds"] = float(kept.get("seconds", 0.0))
        curve = kept.get("curve") or ()
        if not isinstance(curve, list | tuple) or not all(isinstance(p, dict) and "step" in p for p in curve):
            raise ValueError("curve must be a list of points with a step")
        kept["curve"] = tuple(curve)
        return cls(**kept)


RUN_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(RunRow))


@dataclass(frozen=True)
class ScoreRow:
    """One training-free score of one candidate (higher means ranked better)."""

    ranker: str
    arch_id: str
    seed: int
    status: str
    score: float
    seconds: float
    reason: str = ""
    dataset: str = ""
    finished_at: str = ""

    def __post_init__(self) -> None:
        if self.status not in SCORE_STATUSES:
            raise NasProxyError(f"score status must be one of {', '.join(SCORE_STATUSES)}, got {self.status!r}")

    @property
    def key(self) -> ScoreKey:
        return (self.ranker, self.arch_id, self.seed)

    def to_json(self) -> str:
        data = asdict(self)
        if not math.isfinite(self.score):
            data["score"] = None
        return json.dumps(data, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreRow:
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in data.items() if k in names}
        score = kept.get("score")
        kept["score"] = float("nan") if score is None else float(score)
        kept["seed"] = int(kept["seed"])
        kept["seconds"] = float(kept.get("seconds", 0.0))
        return cls(**kept)


SCORE_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ScoreRow))


# ----------------------------------------------------------------------------- JSON lines


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSON-lines file; a torn or malformed line is skipped with a warning, never raised."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    last = len(lines) - 1
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            # The last piece with no newline after it is a write cut short by a kill.
            what = "torn last line (a write cut short)" if number - 1 == last else "malformed line"
            warnings.warn(f"{path}:{number}: skipping {what}", RuntimeWarning, stacklevel=2)
            continue
        yield record


def _cut_torn_tail(path: Path) -> None:
    """Drop bytes after the last newline: a line a killed writer left unfinished."""
    if not path.exists():
        return
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        # Walk back to the last newline (lines are short: read the tail only).
        back = min(size, 1 << 20)
        f.seek(size - back)
        tail = f.read(back)
        cut = tail.rfind(b"\n")
        keep = (size - back + cut + 1) if cut >= 0 else 0
        warnings.warn(
            f"{path}: cutting a torn last line ({size - keep} bytes) before appending", RuntimeWarning, stacklevel=3
        )
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())


def append_jsonl(path: Path, lines: Iterable[str]) -> None:
    """Append lines and fsync before returning: once this returns, the rows survive a kill or power loss."""
    payload = "".join(line + "\n" for line in lines).encode()
    if not payload:
        return
    with open(path, "ab") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file, fsync, then rename over ``path`` (never half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def save_torch_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename over ``path`` (parents created): a checkpoint
    is the old one or the new one, never half of one, when a kill lands mid-write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


# ----------------------------------------------------------------------------- the store


class ResultsStore:
    """A run directory: rows of training runs and scores, plus the protocol that gives them meaning.

    Only the process that owns the store writes to it (joblib and Dask workers return rows to
    it); a writer holds :meth:`lock`, so a second ``evaluate`` on the same directory is refused.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._checked_tails: set[Path] = set()

    @property
    def runs_path(self) -> Path:
        return self.root / RUNS_FILE

    @property
    def scores_path(self) -> Path:
        return self.root / SCORES_FILE

    @property
    def protocol_path(self) -> Path:
        return self.root / PROTOCOL_FILE

    def exists(self) -> bool:
        return self.protocol_path.exists() or self.runs_path.exists()

    @contextmanager
    def lock(self) -> Iterator[Holder | None]:
        """Hold the directory for writing (created if missing); a second writer gets :class:`InUseError`.

        Yields the holder that was killed while holding it, if any (its rows are kept; resuming
        trains only what is missing). Folders created here and still empty at the end (the
        writer refused its input before writing) are removed again: bad input leaves no trace.
        """
        created = []
        d = self.root
        while not d.exists() and d != d.parent:
            created.append(d)
            d = d.parent
        self._mkdir()
        try:
            with exclusive(self.root / LOCK_NAME, *self._lock_words()) as stale:
                yield stale
        finally:
            for folder in created:  # deepest first; stops at the first one holding something
                try:
                    folder.rmdir()
                except OSError:
                    break

    def check_unlocked(self) -> None:
        """Raise :class:`InUseError` now if another process writes here: before loading any data."""
        check_free(self.root / LOCK_NAME, *self._lock_words())

    def _lock_words(self) -> tuple[str, str]:
        return f"run directory {self.root}", "wait for it or use another --out"

    def _mkdir(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # e.g. a parent that is a file: one line, not a traceback
            raise NasProxyError(
                f"cannot create run directory {self.root} ({exc.strerror or exc}); choose another --out"
            ) from exc

    # -- runs

    def rows(self) -> list[RunRow]:
        """Every stored run, first occurrence of a key wins (a key is never trained twice)."""
        out: dict[RunKey, RunRow] = {}
        for record in read_jsonl(self.runs_path):
            try:
                row = RunRow.from_dict(record)
            except (KeyError, TypeError, ValueError) as exc:
                warnings.warn(f"{self.runs_path}: skipping a row with bad fields ({exc})", RuntimeWarning, stacklevel=2)
                continue
            out.setdefault(row.key, row)
        return list(out.values())

    def done_keys(self) -> set[RunKey]:
        return {row.key for row in self.rows()}

    def append(self, row: RunRow) -> None:
        self.append_many([row])

    def append_many(self, rows: Iterable[RunRow]) -> None:
        self._prepare(self.runs_path)
        append_jsonl(self.runs_path, (row.to_json() for row in rows))

    def frame(self) -> pd.DataFrame:
        """Stored runs as a DataFrame with the columns of :class:`RunRow`, in file order."""
        return rows_frame(self.rows())

    # -- scores

    def score_rows(self) -> list[ScoreRow]:
        out: dict[ScoreKey, ScoreRow] = {}
        for record in read_jsonl(self.scores_path):
            try:
                row = ScoreRow.from_dict(record)
            except (KeyError, TypeError, ValueError) as exc:
                warnings.warn(
                    f"{self.scores_path}: skipping a row with bad fields ({exc})", RuntimeWarning, stacklevel=2
                )
                continue
            out.setdefault(row.key, row)
        return list(out.values())

    def append_scores(self, rows: Iterable[ScoreRow]) -> None:
        self._prepare(self.scores_path)
        append_jsonl(self.scores_path, (row.to_json() for row in rows))

    def scores_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(r) for r in self.score_rows()], columns=list(SCORE_COLUMNS))

    # -- protocol

    def load_protocol(self) -> RunProtocol | None:
        """The run's protocol (None before the first ``evaluate``); a malformed file raises naming it."""
        data = self.read_protocol()
        return None if data is None else RunProtocol.from_json(data, str(self.protocol_path))

    def save_protocol(self, protocol: RunProtocol) -> None:
        """Write the protocol whole (atomically): a kill leaves the old one or the new one."""
        self.write_protocol(protocol.to_json())

    def read_protocol(self) -> dict[str, Any] | None:
        """The protocol file as JSON, for tools that show it; the library reads :meth:`load_protocol`."""
        if not self.protocol_path.exists():
            return None
        try:
            data = json.loads(self.protocol_path.read_text())
        except (OSError, ValueError) as exc:
            raise NasProxyError(f"{self.protocol_path}: unreadable protocol file ({exc})") from exc
        if not isinstance(data, dict):
            raise NasProxyError(f"{self.protocol_path}: protocol must be a JSON object")
        return data

    def write_protocol(self, protocol: dict[str, Any]) -> None:
        """Write a protocol given as JSON (hand-made stores in tests); the library uses :meth:`save_protocol`."""
        self._mkdir()
        write_json_atomic(self.protocol_path, protocol)

    def _prepare(self, path: Path) -> None:
        self._mkdir()
        if path not in self._checked_tails:
            _cut_torn_tail(path)
            self._checked_tails.add(path)


def rows_frame(rows: Iterable[RunRow]) -> pd.DataFrame:
    """RunRows as a DataFrame with typed columns (accuracy NaN where a run produced none)."""
    frame = pd.DataFrame([asdict(r) for r in rows], columns=list(RUN_COLUMNS))
    return frame.astype(
        {"seed": "int64", "steps": "int64", "params": "int64", "accuracy": "float64", "seconds": "float64"}
    )


def open_store(path: str | Path) -> ResultsStore:
    """An existing run directory (for ``runs``/``report``); a missing or empty one raises."""
    store = ResultsStore(path)
    if not store.root.is_dir():
        raise NasProxyError(f"run directory {str(store.root)!r} does not exist")
    if not store.exists():
        raise NasProxyError(f"{str(store.root)!r} is not a run directory (no {RUNS_FILE} or {PROTOCOL_FILE})")
    return store
