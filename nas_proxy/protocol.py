"""The run protocol: what the rows of a run directory mean (its ``protocol.json``), as typed values.

Owned by the store layer: :class:`nas_proxy.store.ResultsStore` reads and writes it
(:meth:`~nas_proxy.store.ResultsStore.load_protocol`, :meth:`~nas_proxy.store.ResultsStore.save_protocol`).
The evaluator builds the protocol a call asks for, :meth:`RunProtocol.check` says whether a store
can take it (one line naming the first mismatch), :meth:`RunProtocol.merge` folds it into what the
store holds, and every invocation is recorded (:meth:`RunProtocol.with_invocation`). The report and
the ground-truth export read its fields, never its JSON keys.

Files written by every earlier version still load: every field is optional (hand-made and
partial files too), and keys this version does not know are kept in ``extra`` and written back,
so nothing a newer version recorded is lost when an older one resumes the run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from nas_proxy.errors import NasProxyError
from nas_proxy.train import TrainConfig

# Version of the layout of a run directory (rows and protocol).
STORE_FORMAT = 1


def _known(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.name != "extra")


def _json_object(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise NasProxyError(f"{what} must be a JSON object, got {type(data).__name__}")
    return data


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class StoredConfig:
    """One kind's training config as recorded: :meth:`TrainConfig.fields` and the hash its rows carry."""

    values: Mapping[str, Any] = field(default_factory=dict)
    hash: str | None = None

    @classmethod
    def of(cls, config: TrainConfig) -> StoredConfig:
        return cls(config.fields(), config.hash)

    @property
    def epochs(self) -> int | None:
        return _optional_int(self.values.get("epochs"))

    @property
    def curve_steps(self) -> list[int]:
        return [int(s) for s in self.values.get("curve_steps") or ()]

    def config(self) -> TrainConfig:
        """The TrainConfig these values describe (fields this version lacks are left out)."""
        names = {f.name for f in fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in self.values.items() if k in names})

    def to_json(self) -> dict[str, Any]:
        return {**self.values, **({} if self.hash is None else {"hash": self.hash})}

    @classmethod
    def from_json(cls, data: Any) -> StoredConfig:
        data = _json_object(data, "a training config")
        stored = data.get("hash")
        return cls({k: v for k, v in data.items() if k != "hash"}, None if stored is None else str(stored))


@dataclass(frozen=True)
class SourceRecord:
    """What the protocol records about one training source (:meth:`nas_proxy.sources.TrainingSource.describe`).

    ``meta``: what the kind adds, kept as recorded: a proxy's method, ipc, seed, params, build
    seconds, content hash and path; early stopping's steps and the proxies it matches; a ground
    truth's file.
    """

    kind: str = "proxy"
    label: str = ""
    dataset: str | None = None
    train_images: int | None = None
    images: int | None = None
    bytes: int | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    config_hash: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def steps_per_epoch(self) -> int | None:
        """SGD steps in one epoch on this source (None if the record does not say)."""
        batch = self.config.get("batch_size")
        if not self.train_images or not batch:
            return None
        return math.ceil(int(self.train_images) / int(batch))

    @property
    def epochs(self) -> int | None:
        return _optional_int(self.config.get("epochs"))

    @property
    def build_seconds(self) -> float:
        """Seconds it took to build the proxy set (NaN for other sources)."""
        return float(self.meta.get("build_seconds", math.nan))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "label": self.label}
        for name in ("dataset", "train_images", "images", "bytes"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        if self.config:
            data["config"] = dict(self.config)
        if self.config_hash is not None:
            data["config_hash"] = self.config_hash
        return {**data, **self.meta}

    @classmethod
    def from_json(cls, data: Any) -> SourceRecord:
        data = _json_object(data, "a source record")
        known = _known(cls)
        kept = {k: v for k, v in data.items() if k in known and k != "meta"}
        kept["config"] = dict(_json_object(kept.get("config") or {}, "a source's config"))
        return cls(**kept, meta={k: v for k, v in data.items() if k not in known})


# Every version wrote these, null included (null n_jobs: a scheduler's cluster sized the workers).
_ALWAYS_WRITTEN: frozenset[str] = frozenset({"space", "n_jobs"})


@dataclass(frozen=True)
class Invocation:
    """One ``evaluate`` call on the run directory: what it asked for, where it ran, when it ended.

    ``finished`` stays empty for a call that was interrupted or is still running.
    """

    started: str | None = None
    space: str | None = None
    candidates: int | None = None
    sources: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    n_jobs: int | None = None
    backend: str | None = None
    device: str | None = None
    host: str | None = None
    torch: str | None = None
    fast_options: str | None = None
    cluster: Mapping[str, Any] | None = None
    finished: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def planned(self) -> int:
        """Runs asked of each of its sources: candidates x seeds."""
        return int(self.candidates or 0) * len(self.seeds)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name in _known(Invocation):
            value = getattr(self, name)
            if name in ("sources", "seeds"):
                data[name] = list(value)
            elif value is not None or name in _ALWAYS_WRITTEN:
                data[name] = dict(value) if name == "cluster" else value
        return {**data, **self.extra}

    @classmethod
    def from_json(cls, data: Any) -> Invocation:
        data = _json_object(data, "an invocation")
        known = _known(cls)
        kept = {k: v for k, v in data.items() if k in known}
        kept["sources"] = tuple(str(s) for s in kept.get("sources") or ())
        kept["seeds"] = tuple(int(s) for s in kept.get("seeds") or ())
        return cls(**kept, extra={k: v for k, v in data.items() if k not in known})


# The settings a store's rows depend on besides the training configs: a rerun must agree on each.
_DATA_KEYS: tuple[str, ...] = ("dataset", "num_classes", "in_channels", "image_size", "test_images")


@dataclass(frozen=True)
class RunProtocol:
    """Everything that gives a run directory's rows their meaning.

    ``configs``: one training config per kind (``proxy``, ``full``; early stopping is the whole
    data cut short). ``sources``: every training source by id. ``truth_fidelity``: the
    whole-data epoch the report judges against by default.
    """

    format: int = STORE_FORMAT
    dataset: str | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    image_size: int | None = None
    test_images: int | None = None
    configs: Mapping[str, StoredConfig] = field(default_factory=dict)
    package_version: str | None = None
    sources: Mapping[str, SourceRecord] = field(default_factory=dict)
    created: str | None = None
    invocations: tuple[Invocation, ...] = ()
    space: str | None = None
    truth_fidelity: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    # -- reading

    def config(self, kind: str) -> StoredConfig | None:
        return self.configs.get(kind)

    def source(self, source_id: str) -> SourceRecord | None:
        return self.sources.get(source_id)

    @property
    def seeds(self) -> list[int]:
        """Every training seed any invocation asked for, sorted."""
        return sorted({s for inv in self.invocations for s in inv.seeds})

    @property
    def devices(self) -> list[str]:
        return sorted({inv.device for inv in self.invocations if inv.device})

    def planned(self) -> Iterator[tuple[str, int]]:
        """(source id, runs planned) for every source an invocation asked for: the most of any."""
        most: dict[str, int] = {}
        for inv in self.invocations:
            for sid in inv.sources:
                most[sid] = max(most.get(sid, 0), inv.planned)
        yield from most.items()

    # -- checking and merging

    def check(self, asked: RunProtocol, where: str) -> None:
        """Raise one line naming the first setting where this (stored) protocol and ``asked`` disagree."""
        for key in _DATA_KEYS:
            have, want = getattr(self, key), getattr(asked, key)
            if have is not None and have != want:
                raise NasProxyError(
                    f"{where} holds results for {key} {have!r}, this run has {want!r}; use another --out"
                )
        for kind, cfg in asked.configs.items():
            before = self.configs.get(kind)
            if before is not None and before.hash != cfg.hash:
                diff = [k for k in cfg.values if before.values.get(k) != cfg.values[k]]
                what = ", ".join(f"{k} {before.values.get(k)!r} -> {cfg.values[k]!r}" for k in diff) or "config hash"
                raise NasProxyError(f"{where} trained {kind} runs under another protocol ({what}); use another --out")
        for sid, desc in asked.sources.items():
            old = self.sources.get(sid)
            if old is not None and old.config_hash != desc.config_hash:
                raise NasProxyError(f"{where}: source {sid} was trained with another config; use another --out")
            if old is not None and old.train_images != desc.train_images:
                raise NasProxyError(
                    f"{where}: source {sid} had {old.train_images} training images, now "
                    f"{desc.train_images}; use another --out"
                )

    def merge(self, asked: RunProtocol) -> RunProtocol:
        """This protocol with ``asked``'s configs and sources added (``asked`` wins) and its version.

        Settings this one lacks (a file from before they were recorded) are taken from ``asked``;
        call :meth:`check` first: merging does not compare.
        """
        filled = {k: getattr(asked, k) for k in _DATA_KEYS if getattr(self, k) is None}
        return replace(
            self,
            **filled,
            configs={**self.configs, **asked.configs},
            sources={**self.sources, **asked.sources},
            package_version=asked.package_version,
        )

    def with_invocation(self, invocation: Invocation) -> RunProtocol:
        return replace(self, invocations=(*self.invocations, invocation))

    def finished(self, when: str) -> RunProtocol:
        """The last invocation marked finished at ``when``."""
        if not self.invocations:
            return self
        *before, last = self.invocations
        return replace(self, invocations=(*before, replace(last, finished=when)))

    # -- JSON

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name in _known(RunProtocol):
            value = getattr(self, name)
            if name == "configs":
                data[name] = {kind: c.to_json() for kind, c in value.items()}
            elif name == "sources":
                data[name] = {sid: s.to_json() for sid, s in value.items()}
            elif name == "invocations":
                data[name] = [inv.to_json() for inv in value]
            elif value is not None:
                data[name] = value
        return {**data, **self.extra}

    @classmethod
    def from_json(cls, data: Any, where: str = "protocol") -> RunProtocol:
        """The protocol of a ``protocol.json`` object; a malformed one raises naming ``where``."""
        try:
            data = _json_object(data, "the protocol")
            known = _known(cls)
            kept = {k: v for k, v in data.items() if k in known}
            for key in ("num_classes", "in_channels", "image_size", "test_images", "truth_fidelity"):
                kept[key] = _optional_int(kept.get(key))
            kept["format"] = int(kept.get("format", STORE_FORMAT))
            kept["configs"] = {
                str(k): StoredConfig.from_json(v) for k, v in _json_object(kept.get("configs") or {}, "configs").items()
            }
            kept["sources"] = {
                str(k): SourceRecord.from_json(v) for k, v in _json_object(kept.get("sources") or {}, "sources").items()
            }
            kept["invocations"] = tuple(Invocation.from_json(i) for i in kept.get("invocations") or ())
            return cls(**kept, extra={k: v for k, v in data.items() if k not in known})
        except (TypeError, ValueError) as exc:
            raise NasProxyError(f"{where}: malformed protocol ({exc})") from exc
