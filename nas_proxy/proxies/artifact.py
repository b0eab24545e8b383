"""ProxySet: a small training set with a manifest, saved as one ``.npz`` file and validated on load.

The file holds ``images`` (N, C, H, W float32, normalized space), ``labels`` (N int64) and
``manifest`` (a JSON string). Loading checks the manifest's fields, shapes, class balance, a
SHA-256 content hash of images and labels, and a SHA-256 of the manifest itself
(``manifest_hash``), and names the file and the fault in every error, so a truncated or edited
file never loads silently. Files from before manifest hashes still load, with a note that
their manifest is unprotected.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas_proxy.data import DATASETS, Split
from nas_proxy.errors import NasProxyError, one_line
from nas_proxy.log import note
from nas_proxy.validate import read_npz

FORMAT_VERSION = 1


def content_hash(images: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 of the exact float32 image bytes and int64 label bytes."""
    h = hashlib.sha256()
    h.update(images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(labels.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ProxyManifest:
    """Where a proxy set came from and what it costs to keep."""

    method: str
    params: dict[str, Any]
    dataset: str
    num_classes: int
    ipc: int
    seed: int
    build_seconds: float
    images: int
    bytes: int
    content_hash: str
    package_version: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    created: str = ""
    # Training-set rows of a selection proxy (None for synthesized images).
    indices: tuple[int, ...] | None = None
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    # Where an imported set came from (format, source file and SHA-256, experiment index, method;
    # nas_proxy.proxies.importers); None for a set built here.
    origin: dict[str, Any] | None = None
    # Own data: the resolved path of the dataset file at build time, where eval-proxy and search
    # look for it ("" for named datasets; ``dataset`` is what must match, by content).
    dataset_origin: str = ""

    def to_json(self) -> str:
        """The manifest as JSON, sealed with ``manifest_hash`` (a SHA-256 of every other field)."""
        data = json.loads(json.dumps(asdict(self)))  # as a reader will see it: tuples are lists
        return json.dumps({**data, "manifest_hash": manifest_hash(data)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> ProxyManifest:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise NasProxyError(f"{source}: manifest is not valid JSON ({one_line(str(exc), 120)})") from exc
        if not isinstance(data, dict):
            raise NasProxyError(f"{source}: manifest must be a JSON object")
        sealed = data.pop("manifest_hash", None)
        if sealed is None:
            note(
                f"{source}: its manifest is not protected by a hash (a file from before manifest hashes), so "
                "an edit to it would go unnoticed; re-save it to protect it: save_proxy(load_proxy(p), p)"
            )
        elif sealed != manifest_hash(data):
            raise NasProxyError(
                f"{source}: manifest hash mismatch: the manifest was edited after saving; rebuild the proxy"
            )
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(required - data.keys())
        if missing:
            raise NasProxyError(f"{source}: manifest lacks {', '.join(missing)}")
        data = {k: v for k, v in data.items() if k in names}
        for key, value in data.items():
            kind = _MANIFEST_KINDS[key]
            if not _is_kind(value, kind):
                raise NasProxyError(f"{source}: manifest field {key} must be {kind}, got {value!r:.60}")
        if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise NasProxyError(f"{source}: format version {data['format_version']} is newer than this nas-proxy reads")
        for key in ("mean", "std"):
            data[key] = tuple(data[key])
        if data.get("indices") is not None:
            data["indices"] = tuple(data["indices"])
        return cls(**data)


def manifest_hash(fields: dict[str, Any]) -> str:
    """SHA-256 of a manifest's fields (without ``manifest_hash``) as canonical JSON."""
    body = {k: v for k, v in fields.items() if k != "manifest_hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# JSON kind of each manifest field: an edited manifest fails here, naming the field.
_MANIFEST_KINDS: dict[str, str] = {
    "method": "str",
    "params": "object",
    "dataset": "str",
    "num_classes": "int",
    "ipc": "int",
    "seed": "int",
    "build_seconds": "number",
    "images": "int",
    "bytes": "int",
    "content_hash": "str",
    "package_version": "str",
    "mean": "list of numbers",
    "std": "list of numbers",
    "created": "str",
    "indices": "null or list of ints",
    "format_version": "int",
    "extra": "object",
    "origin": "null or object",
    "dataset_origin": "str",
}


def _is_kind(value: Any, kind: str) -> bool:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    checks: dict[str, Callable[[Any], bool]] = {
        "str": lambda v: isinstance(v, str),
        "object": lambda v: isinstance(v, dict),
        "int": is_int,
        "number": is_number,
        "list of numbers": lambda v: isinstance(v, list) and all(map(is_number, v)),
        "null or list of ints": lambda v: v is None or (isinstance(v, list) and all(map(is_int, v))),
        "null or object": lambda v: v is None or isinstance(v, dict),
    }
    return checks[kind](value)


@dataclass(frozen=True, eq=False)
class ProxySet:
    """A proxy training set: ``images``, ``labels`` and the ``manifest`` that describes them."""

    images: torch.Tensor
    labels: torch.Tensor
    manifest: ProxyManifest

    @property
    def id(self) -> str:
        """Training-source id used in results rows: ``dc-ipc10-s0-1a2b3c4d``."""
        m = self.manifest
        return f"{m.method}-ipc{m.ipc}-s{m.seed}-{m.content_hash[:8]}"

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def as_split(self, device: torch.device | str | None = None) -> Split:
        """The proxy as a training Split (on ``device``, default: where the images are)."""
        m = self.manifest
        split = Split(self.images.detach(), self.labels, m.num_classes, m.dataset, m.mean, m.std)
        return split if device is None else split.to(device)


def make_proxy_set(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    method: str,
    params: dict[str, Any],
    source: Split,
    ipc: int,
    seed: int,
    build_seconds: float,
    indices: torch.Tensor | None = None,
    extra: dict[str, Any] | None = None,
    origin: dict[str, Any] | None = None,
) -> ProxySet:
    """Wrap built (or imported: ``origin``) tensors, moved to CPU as float32, with a complete manifest."""
    # Here, not at the top: the package sets __version__ after importing its modules.
    from nas_proxy import __version__

    images = images.detach().to("cpu", torch.float32).contiguous()
    labels = labels.detach().to("cpu", torch.int64).contiguous()
    manifest = ProxyManifest(
        method=method,
        params=params,
        dataset=source.dataset,
        num_classes=source.num_classes,
        ipc=ipc,
        seed=seed,
        build_seconds=round(build_seconds, 3),
        images=int(labels.shape[0]),
        bytes=images.numel() * images.element_size() + labels.numel() * labels.element_size(),
        content_hash=content_hash(images, labels),
        package_version=__version__,
        mean=tuple(source.mean),
        std=tuple(source.std),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        indices=None if indices is None else tuple(int(i) for i in indices.tolist()),
        extra=extra or {},
        origin=origin,
        dataset_origin=source.origin,
    )
    proxy = ProxySet(images, labels, manifest)
    validate(proxy, "built proxy")
    return proxy


def validate(proxy: ProxySet, source: str) -> None:
    """Raise naming ``source`` if shapes, labels, balance, counts or the hash disagree."""
    m, x, y = proxy.manifest, proxy.images, proxy.labels
    if x.ndim != 4:
        raise NasProxyError(f"{source}: images must be (N, C, H, W), got shape {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise NasProxyError(f"{source}: {x.shape[0]} images but labels of shape {tuple(y.shape)}")
    if len(m.mean) != x.shape[1] or len(m.std) != x.shape[1]:
        raise NasProxyError(f"{source}: {x.shape[1]} channels but mean/std of length {len(m.mean)}/{len(m.std)}")
    if m.images != x.shape[0] or m.ipc * m.num_classes != x.shape[0]:
        raise NasProxyError(
            f"{source}: holds {x.shape[0]} images; manifest says {m.images} ({m.ipc} per class x {m.num_classes})"
        )
    if m.bytes != x.numel() * 4 + y.numel() * 8:
        raise NasProxyError(
            f"{source}: manifest says {m.bytes} bytes but images and labels take {x.numel() * 4 + y.numel() * 8}"
        )
    if m.indices is not None and len(m.indices) != x.shape[0]:
        raise NasProxyError(f"{source}: {x.shape[0]} images but {len(m.indices)} training-set indices")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= m.num_classes):
        raise NasProxyError(f"{source}: labels outside 0..{m.num_classes - 1}")
    counts = torch.bincount(y, minlength=m.num_classes)
    if bool((counts != m.ipc).any()):
        raise NasProxyError(f"{source}: not class-balanced, images per class {counts.tolist()} (expected {m.ipc})")
    if not bool(torch.isfinite(x).all()):
        raise NasProxyError(f"{source}: images contain NaN or infinity")
    if content_hash(x, y) != m.content_hash:
        raise NasProxyError(f"{source}: content hash mismatch: the images or labels were changed after saving")


def save_proxy(proxy: ProxySet, path: str | Path) -> Path:
    """Write ``proxy`` to ``path`` (``.npz`` added if missing) atomically; returns the path."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            images=proxy.images.numpy(),
            labels=proxy.labels.numpy(),
            manifest=np.array(proxy.manifest.to_json()),
        )
    tmp.replace(path)
    return path


def load_proxy(path: str | Path) -> ProxySet:
    """Load and validate a proxy file; every error names the file and what is wrong. Never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise NasProxyError(f"proxy file {str(path)!r} does not exist")
    f = read_npz(path, ("images", "labels", "manifest"), "proxy file")
    images, labels = f["images"], f["labels"]
    if images.dtype != np.float32 or labels.dtype != np.int64:
        raise NasProxyError(f"{path}: expected float32 images and int64 labels, got {images.dtype} and {labels.dtype}")
    if f["manifest"].ndim != 0 or f["manifest"].dtype.kind != "U":
        raise NasProxyError(f"{path}: manifest must be one JSON string, got a {f['manifest'].dtype} array")
    manifest = ProxyManifest.from_json(str(f["manifest"]), str(path))
    proxy = ProxySet(torch.from_numpy(images.copy()), torch.from_numpy(labels.copy()), manifest)
    validate(proxy, str(path))
    return proxy


def dataset_argument(manifest: ProxyManifest) -> str:
    """What to give ``load_dataset`` for the data a proxy was built from: its name, or its file."""
    return manifest.dataset_origin or manifest.dataset


def check_dataset(proxy: ProxySet, split: Split, source: str) -> None:
    """Raise unless ``split`` is the dataset ``proxy`` was built from: the same id, so the same content.

    Proxies from before content ids recorded own data by the path typed at build time; they
    match a dataset loaded from that file, with a note (a different file there would pass).
    """
    m = proxy.manifest
    if m.dataset == split.dataset:
        return
    legacy = not m.dataset_origin and m.dataset.lower() not in (*DATASETS, "synthetic")
    if legacy and split.origin and Path(m.dataset).expanduser().resolve() == Path(split.origin):
        note(f"{source}: built before datasets had content ids; matched to {m.dataset} by its path only")
        return
    where = f" (from {m.dataset_origin})" if m.dataset_origin else ""
    raise NasProxyError(
        f"{source} was built from dataset {m.dataset!r}{where}, not {split.dataset!r}: other data, or the file "
        "changed since the build; give the dataset it was built from"
    )


def with_manifest(proxy: ProxySet, **changes: Any) -> ProxySet:
    """A copy with manifest fields replaced (e.g. ``build_seconds`` after a resumed build)."""
    return ProxySet(proxy.images, proxy.labels, replace(proxy.manifest, **changes))
