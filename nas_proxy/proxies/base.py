"""The builder contract: a frozen dataclass of hyperparameters with one verb, ``build(train)``.

Like scikit-learn estimators, a builder's constructor stores hyperparameters only; the data goes
to the verb, and randomness comes from the ``seed`` field. Subclasses implement ``_build``.
"""

from __future__ import annotations

import abc
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from nas_proxy.data import Split
from nas_proxy.errors import NasProxyError, check_positive_int
from nas_proxy.proxies.artifact import ProxySet, make_proxy_set


@dataclass
class BuildContext:
    """How a build runs (not what it builds): progress display and a resumable checkpoint."""

    progress: bool = False
    checkpoint: Path | None = None
    # Seconds spent before a resume, so the manifest reports the whole build time.
    seconds_before: float = 0.0


@dataclass
class BuildResult:
    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor | None = None  # rows of the training set, for selection methods
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProxyBuilder(abc.ABC):
    """Turns a training Split into a class-balanced ProxySet of ``ipc`` images per class."""

    name: ClassVar[str]
    ipc: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int(self.ipc, "ipc (images per class)")

    def params(self) -> dict[str, Any]:
        """Every hyperparameter, as recorded in the manifest."""
        return asdict(self)

    @classmethod
    def param_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def build(self, train: Split, *, progress: bool = False, checkpoint: str | Path | None = None) -> ProxySet:
        """Build the proxy from ``train``; ``checkpoint`` lets an interrupted build resume."""
        counts = torch.bincount(train.labels.cpu(), minlength=train.num_classes)
        if int(counts.min()) < self.ipc:
            short = int(counts.argmin())
            raise NasProxyError(
                f"{self.name}: ipc {self.ipc} exceeds the {int(counts.min())} training images of class {short}"
            )
        ctx = BuildContext(progress=progress, checkpoint=Path(checkpoint) if checkpoint else None)
        start = time.perf_counter()
        out = self._build(train, ctx)
        seconds = ctx.seconds_before + time.perf_counter() - start
        return make_proxy_set(
            out.images,
            out.labels,
            method=self.name,
            params=self.params(),
            source=train,
            ipc=self.ipc,
            seed=self.seed,
            build_seconds=seconds,
            indices=out.indices,
            extra=out.extra,
        )

    @abc.abstractmethod
    def _build(self, train: Split, ctx: BuildContext) -> BuildResult:
        """Return ``ipc`` images per class, rows of class c contiguous and classes in order."""


def class_balanced_labels(num_classes: int, ipc: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Labels ``[0]*ipc + [1]*ipc + ...``: class c owns rows ``c*ipc .. (c+1)*ipc - 1``."""
    return torch.arange(num_classes, device=device).repeat_interleave(ipc)
