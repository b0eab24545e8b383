"""Training sources: a named training set plus the TrainConfig to train on it.

A proxy set, the whole training set (``"full"``, the ground truth) and early stopping (the
whole set for as many SGD steps as a proxy run takes) are all one value, :class:`TrainingSource`:
the evaluator (:mod:`nas_proxy.evaluate`) and the Optuna objective (:mod:`nas_proxy.search`)
train on it without knowing which it is. ``describe()`` is what a run's protocol records about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nas_proxy.data import Split
from nas_proxy.errors import NasProxyError
from nas_proxy.proxies.artifact import ProxySet
from nas_proxy.train import TrainConfig

SOURCE_KINDS: tuple[str, ...] = ("proxy", "early", "full")
FULL_ID = "full"


@dataclass(frozen=True, eq=False)
class TrainingSource:
    """A named training set and how to train on it. ``id`` is the ``source_id`` of its rows."""

    id: str
    kind: str  # "proxy" | "early" | "full"
    split: Split
    config: TrainConfig
    label: str = ""
    images: int = 0  # storage: images kept (the proxy's, or the whole set's)
    bytes: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise NasProxyError(f"source kind must be one of {', '.join(SOURCE_KINDS)}, got {self.kind!r}")
        if not self.id or any(c in self.id for c in "\n\r,\"'"):
            raise NasProxyError(f"bad training-source id {self.id!r}")

    def describe(self) -> dict[str, Any]:
        """What the protocol file records about this source."""
        return {
            "kind": self.kind,
            "label": self.label or self.id,
            "dataset": self.split.dataset,
            "train_images": len(self.split),
            "images": self.images or len(self.split),
            "bytes": self.bytes or split_bytes(self.split),
            "config": self.config.fields(),
            "config_hash": self.config.hash,
            **self.meta,
        }


def split_bytes(split: Split) -> int:
    return split.images.numel() * split.images.element_size() + split.labels.numel() * split.labels.element_size()


def proxy_source(proxy: ProxySet, config: TrainConfig, *, path: str | Path | None = None) -> TrainingSource:
    """A proxy set as a training source (id ``<method>-ipc<k>-s<seed>-<hash>``, storage from its manifest)."""
    m = proxy.manifest
    meta: dict[str, Any] = {
        "method": m.method,
        "ipc": m.ipc,
        "proxy_seed": m.seed,
        "params": m.params,
        "build_seconds": m.build_seconds,
        "content_hash": m.content_hash,
    }
    if path is not None:
        meta["path"] = str(path)
    return TrainingSource(
        id=proxy.id,
        kind="proxy",
        split=proxy.as_split(),
        config=config,
        label=f"{m.method} ipc{m.ipc}",
        images=m.images,
        bytes=m.bytes,
        meta=meta,
    )


def full_source(train: Split, config: TrainConfig, *, id: str = FULL_ID) -> TrainingSource:
    """Real training images (the whole set, or a slice of it): the ground truth every ranker is judged against.

    ``id`` other than ``"full"``: real images that are not the ground truth, e.g. an Optuna
    study's training Split (:func:`nas_proxy.search.make_objective`).
    """
    return TrainingSource(id, "full", train, config, label="whole data", images=len(train), bytes=split_bytes(train))


def early_stopping_sources(
    proxies: Sequence[TrainingSource], train: Split, config: TrainConfig
) -> list[TrainingSource]:
    """Whole data, stopped after as many SGD steps as a proxy run takes (one source per distinct count).

    Proxies of the same size take the same number of steps, so they share one early-stopping
    source (``early-<steps>steps``) instead of training identical runs again.
    """
    by_steps: dict[int, list[str]] = {}
    for p in proxies:
        if p.kind == "proxy":
            by_steps.setdefault(p.config.total_steps(len(p.split)), []).append(p.id)
    return [
        TrainingSource(
            f"early-{steps}steps",
            "early",
            train,
            replace(config.without_curve(), max_steps=steps),
            label=f"early stopping ({steps} steps)",
            images=len(train),
            bytes=split_bytes(train),
            meta={"steps": steps, "matches": ids},
        )
        for steps, ids in sorted(by_steps.items())
    ]
