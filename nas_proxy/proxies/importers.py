"""Import condensed sets written by other tools as ordinary ProxySets (REFERENCE.md section 8).

Formats (``IMPORT_FORMATS``):

- ``dc-official``: the dataset-condensation authors' ``res_<method>_<dataset>_<model>_<ipc>ipc.pt``,
  ``torch.save`` of ``{"data": [[images, labels], ...], "accs_all_exps": {model: [acc, ...]}}`` with
  one pair per experiment, images normalized with the dataset's mean and std;
- ``tensors``: an image tensor and a label tensor, as trajectory-matching code (MTT, FTD, DATM)
  saves ``images_best.pt`` / ``labels_best.pt`` (also normalized), or one ``.pt`` holding both;
- ``npz``: numpy arrays of images and labels; the pixel scale is read from dtype and range.

Reading never runs code from the file: ``torch.load(weights_only=True)`` with nothing allowed beyond
tensors and plain data but numpy's scalars and numeric dtypes (the authors' accuracies are numpy
floats), and ``np.load(allow_pickle=False)``. The images are then checked against the dataset
(shape, labels, class balance, finite values, pixel scale and range) and converted where the
convention is known, each step said in a note; the manifest's ``origin`` records the format, the
source file's name and SHA-256, the experiment index and the method name.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas_proxy.data import DATASETS, Split, load_dataset
from nas_proxy.errors import NasProxyError, UnknownNameError
from nas_proxy.proxies.artifact import ProxySet, make_proxy_set

# How a file's pixel values are scaled. "normalized": the dataset's (x - mean) / std, the space
# proxies live in; "unit": pixels in [0, 1]; "byte": pixels in 0..255; "auto": the format's known
# convention (uint8 always means bytes), and for .npz what dtype and range say.
PIXEL_SCALES: tuple[str, ...] = ("auto", "normalized", "unit", "byte")
SOFT_LABELS: tuple[str, ...] = ("refuse", "argmax")

# Key pairs tried in a dict of tensors or an .npz, in order (``keys`` overrides).
KNOWN_KEYS: tuple[tuple[str, str], ...] = (
    ("images", "labels"),
    ("image_syn", "label_syn"),
    ("x", "y"),
    ("X", "Y"),
    ("x_train", "y_train"),
    ("data", "targets"),
)

_DC_FILE_NAME = re.compile(r"res_(?P<method>[^_]+)_(?P<dataset>[^_]+)_(?P<model>.+)_(?P<ipc>\d+)ipc\.pt")
_METHOD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


@dataclass(frozen=True)
class ImportRequest:
    """What to import and how; the readers see the options that concern them."""

    source: Path
    format: str
    dataset: str
    index: int | None = None  # dc-official: the experiment
    method: str | None = None
    pixels: str = "auto"
    soft_labels: str = "refuse"
    labels: Path | None = None  # tensors: the label file, when not beside the images
    keys: tuple[str, str] | None = None  # npz / dict of tensors: the image and label names
    build_seconds: float = 0.0


@dataclass(frozen=True, eq=False)
class RawSet:
    """What a reader found, before any check: the tensors as stored, and where they came from."""

    images: torch.Tensor
    labels: torch.Tensor
    files: tuple[Path, ...]  # the source first, then a separate label file if any
    scale: str = "auto"  # the format's known pixel convention
    method: str | None = None  # a method name the file itself gives
    details: dict[str, Any] = field(default_factory=dict)  # format-specific origin fields
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class ImportResult:
    """The imported proxy, and one note per check or conversion worth telling the user."""

    proxy: ProxySet
    notes: tuple[str, ...]


# ----------------------------------------------------------------------------- safe reading


def _numpy_globals() -> list[Any]:
    """numpy scalars and numeric dtypes, under numpy 1's and numpy 2's module names: building them runs no code."""
    try:
        from numpy._core.multiarray import scalar  # type: ignore[attr-defined]
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[attr-defined,no-redef]
    dtypes = {type(np.dtype(code)) for code in ("?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")}
    names = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
    return [np.dtype, *sorted(dtypes, key=str), *((scalar, name) for name in names)]


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # old torch or a legacy file: the unpickler's message must do
        return []


def torch_load_safely(path: Path) -> Any:
    """``torch.load`` that builds only tensors, plain containers and numpy numbers, or refuses naming what it found."""
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    guard = allow(_numpy_globals()) if allow is not None else contextlib.nullcontext()
    try:
        with guard:
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _unsafe_globals(path) or re.findall(r"GLOBAL (\S+)", str(exc))[:3] or ["unsupported objects"]
        raise NasProxyError(
            f"{path}: refused: loading it would run code or build objects other than tensors and numbers "
            f"({', '.join(found)}); nas-proxy never executes code from a file"
        ) from exc
    except Exception as exc:  # zip, storage and EOF errors on damaged or foreign files come in many types
        first = " ".join(str(exc).split())[:160]
        raise NasProxyError(f"{path}: not a readable torch file ({type(exc).__name__}: {first})") from exc


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pick_pair(names: list[str], keys: tuple[str, str] | None, source: Path, what: str) -> tuple[str, str]:
    pairs = (keys,) if keys is not None else KNOWN_KEYS
    for pair in pairs:
        if pair[0] in names and pair[1] in names:
            return pair
    known = "; ".join(f"{a},{b}" for a, b in KNOWN_KEYS)
    hint = f"no {keys[0]!r} and {keys[1]!r}" if keys is not None else f"none of the known pairs ({known})"
    raise NasProxyError(f"{source}: {what} holds {', '.join(map(repr, names)) or 'nothing'}: {hint}; "
                        "name the two with --keys IMAGES,LABELS")


# ----------------------------------------------------------------------------- readers


def _read_dc_official(req: ImportRequest) -> RawSet:
    """The authors' ``res_*.pt``: experiment ``index`` (default 0) of ``data``, and its reported accuracies."""
    path = req.source
    obj = torch_load_safely(path)
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list | tuple) or not data:
        raise NasProxyError(
            f"{path}: not a dataset-condensation result: expected a dict whose 'data' is a list of "
            "[images, labels] pairs (the authors' res_<method>_<dataset>_<model>_<ipc>ipc.pt)"
        )
    k = 0 if req.index is None else req.index
    if not 0 <= k < len(data):
        raise NasProxyError(f"{path}: no experiment {k}: the file holds {len(data)} (--index 0..{len(data) - 1})")
    pair = data[k]
    if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(t, torch.Tensor) for t in pair)):
        raise NasProxyError(f"{path}: experiment {k} is not an [images, labels] pair of tensors")
    details: dict[str, Any] = {"experiments": len(data)}
    notes = []
    if req.index is None and len(data) > 1:
        notes.append(f"experiment 0 of the {len(data)} in the file (--index K picks another)")
    named = _DC_FILE_NAME.fullmatch(path.name)
    if named is not None:
        details.update(model=named["model"], file_dataset=named["dataset"], file_ipc=int(named["ipc"]))
        theirs, ours = named["dataset"].lower(), req.dataset.lower()
        if theirs in DATASETS and ours in DATASETS and theirs != ours:
            raise NasProxyError(f"{path.name} is a {named['dataset']} result (says its name), not --dataset {ours}")
    # accs_all_exps[model] holds every experiment's evaluations in turn: experiment k's are slice k.
    accs = obj.get("accs_all_exps")
    reported: dict[str, list[float]] = {}
    if isinstance(accs, dict):
        for model, values in accs.items():
            if isinstance(values, list | tuple) and values and len(values) % len(data) == 0:
                per = len(values) // len(data)
                with contextlib.suppress(TypeError, ValueError):
                    reported[str(model)] = [round(float(v), 6) for v in values[k * per : (k + 1) * per]]
    if reported:
        details["reported_accuracy"] = reported
    method = named["method"].lower() if named is not None else None
    return RawSet(pair[0], pair[1], (path,), "normalized", method, details, tuple(notes))


def _labels_beside(images: Path) -> Path:
    """``images_best.pt`` -> ``labels_best.pt`` (the last "images" in the name becomes "labels")."""
    stem, sep, tail = images.name.rpartition("images")
    if not sep:
        raise NasProxyError(f"{images}: no label file to pair it with: give --labels FILE")
    return images.with_name(f"{stem}labels{tail}")


def _read_tensors(req: ImportRequest) -> RawSet:
    """Image and label tensors: two files (MTT's images_best.pt / labels_best.pt), or one holding both."""
    path = req.source
    if path.is_dir():
        inside = path / "images_best.pt"
        if not inside.is_file():
            found = ", ".join(sorted(p.name for p in path.glob("*.pt"))[:8]) or "no .pt files"
            raise NasProxyError(f"{path}: no images_best.pt in this folder ({found}); give the image file itself")
        path = inside
    obj = torch_load_safely(path)
    if isinstance(obj, torch.Tensor):
        labels_path = req.labels if req.labels is not None else _labels_beside(path)
        if not labels_path.is_file():
            raise NasProxyError(f"label file {str(labels_path)!r} does not exist; give --labels FILE")
        labels = torch_load_safely(labels_path)
        if not isinstance(labels, torch.Tensor):
            raise NasProxyError(f"{labels_path}: expected a label tensor, found {type(labels).__name__}")
        return RawSet(obj, labels, (path, labels_path), "normalized")
    if req.labels is not None:
        raise NasProxyError(f"{path} holds more than an image tensor; --labels applies to an image-only file")
    if isinstance(obj, dict):
        names = [k for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)]
        a, b = _pick_pair(names, req.keys, path, "the dict")
        return RawSet(obj[a], obj[b], (path,), "normalized", details={"keys": [a, b]})
    if isinstance(obj, list | tuple) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj):
        return RawSet(obj[0], obj[1], (path,), "normalized")
    raise NasProxyError(
        f"{path}: expected an image tensor (with its label file), a dict of tensors or an (images, labels) pair, "
        f"found {type(obj).__name__}"
    )


def _read_npz(req: ImportRequest) -> RawSet:
    """Two arrays of an ``.npz`` (no pickles): images any layout and scale, integer labels."""
    path = req.source
    try:
        with contextlib.ExitStack() as stack:
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise NasProxyError(f"{path}: a single array, not an .npz archive of images and labels")
            archive = stack.enter_context(loaded)
            a, b = _pick_pair(list(archive.files), req.keys, path, "the archive")
            images, labels = archive[a], archive[b]
    except NasProxyError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise NasProxyError(
                f"{path}: refused: it holds pickled objects (loading them could run code); "
                "nas-proxy reads only plain numeric arrays"
            ) from exc
        raise NasProxyError(f"{path}: not a readable .npz file ({exc})") from exc
    except Exception as exc:  # zip and header errors on damaged files come in many types
        raise NasProxyError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from exc
    for name, array in ((a, images), (b, labels)):
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise NasProxyError(f"{path}: array {name!r} has dtype {array.dtype}, not numbers")
    return RawSet(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(np.ascontiguousarray(labels)),
                  (path,), "auto", details={"keys": [a, b]})


Reader = Callable[[ImportRequest], RawSet]
IMPORT_FORMATS: dict[str, Reader] = {"dc-official": _read_dc_official, "tensors": _read_tensors, "npz": _read_npz}


def list_import_formats() -> list[str]:
    return list(IMPORT_FORMATS)


# ----------------------------------------------------------------------------- checks


def _shown(ref: Split) -> str:
    """How an error names the dataset: own data by its file (its id is a content hash), else its name."""
    return ref.origin or ref.dataset


def dataset_reference(dataset: str) -> Split:
    """The dataset a set must fit: a named one's shape, classes, mean and std with no images loaded
    (a CIFAR-10 set imports offline), else the training split of the .npz file or image folder."""
    info = DATASETS.get(dataset.lower())
    if info is not None:
        empty = torch.empty(0, info.channels, info.size, info.size)
        return Split(empty, torch.empty(0, dtype=torch.long), info.num_classes, info.name, info.mean, info.std)
    train, _ = load_dataset(dataset, device="cpu")
    return train


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel min, max, mean and std of (N, C, H, W) images."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1)
    return flat.min(1).values, flat.max(1).values, flat.mean(1), flat.std(1, correction=0)


def _real_range(ref: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel range of the dataset's real images once normalized ([0, 1] pixels mapped, or measured)."""
    if len(ref):
        lo, hi, _, _ = _channel_stats(ref.images.float())
        return lo, hi
    mean, std = torch.tensor(ref.mean), torch.tensor(ref.std)
    return (0 - mean) / std, (1 - mean) / std


def _fmt(values: torch.Tensor, digits: int = 2) -> str:
    """Per-channel values joined by "/" (one number for a grey-scale dataset)."""
    return "/".join(f"{v:.{digits}f}" for v in values.tolist())


def _to_nchw(x: torch.Tensor, ref: Split, source: Path, notes: list[str]) -> torch.Tensor:
    c, h, w = (int(s) for s in ref.images.shape[1:])
    if x.ndim == 3 and c == 1 and tuple(x.shape[1:]) == (h, w):
        notes.append("images were (N, H, W): one channel added")
        return x[:, None]
    if x.ndim == 4 and tuple(x.shape[1:]) == (c, h, w):
        return x
    if x.ndim == 4 and tuple(x.shape[1:]) == (h, w, c):
        notes.append("images were channels-last (N, H, W, C): transposed to (N, C, H, W)")
        return x.permute(0, 3, 1, 2).contiguous()
    raise NasProxyError(
        f"{source}: images of shape {tuple(x.shape)} do not fit {_shown(ref)} ({c}x{h}x{w}): "
        f"expected (N, {c}, {h}, {w}) or (N, {h}, {w}, {c})"
    )


def _hard_labels(y: torch.Tensor, n: int, classes: int, soft: str, source: Path, notes: list[str]) -> torch.Tensor:
    if y.ndim == 2 and y.shape[1] == classes and y.is_floating_point() and classes > 1:
        if soft == "refuse":
            raise NasProxyError(
                f"{source}: soft labels (N x {classes} scores, as DATM learns them), but a proxy set trains on "
                "hard labels; --soft-labels argmax keeps each row's largest (not what the method trained with)"
            )
        notes.append("soft labels reduced to each row's argmax (--soft-labels argmax)")
        y = y.argmax(1)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise NasProxyError(f"{source}: labels must be (N,) class numbers, got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise NasProxyError(f"{source}: {n} images but {y.shape[0]} labels")
    if y.dtype == torch.bool or y.is_complex() or (y.is_floating_point() and not bool((y == y.round()).all())):
        raise NasProxyError(f"{source}: labels must be whole class numbers, got dtype {y.dtype}")
    y = y.to(torch.int64)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise NasProxyError(
            f"{source}: labels {int(y.min())}..{int(y.max())} fall outside the dataset's classes 0..{classes - 1}"
        )
    return y


def _class_order(
    x: torch.Tensor, y: torch.Tensor, classes: int, source: Path, notes: list[str]
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Check class balance; put rows in class order (class c's images contiguous), as our builders do."""
    counts = torch.bincount(y, minlength=classes)
    if not bool((counts == counts[0]).all()) or int(counts[0]) == 0:
        raise NasProxyError(
            f"{source}: not class-balanced, images per class {counts.tolist()}; a proxy set holds as many of each class"
        )
    order = torch.argsort(y, stable=True)
    if not torch.equal(order, torch.arange(len(y))):
        notes.append("rows reordered by class (class c's images contiguous, classes in order), as built proxies are")
        x, y = x[order], y[order]
    return x, y, int(counts[0])


def _choose_scale(x: torch.Tensor, req: ImportRequest, known: str, lo: torch.Tensor) -> tuple[str, str]:
    """(scale, why): the one given, else what the format or the values say; refuses a clear contradiction."""
    xmin, xmax = float(x.min()), float(x.max())
    span = f"values span {xmin:.3g}..{xmax:.3g}"
    if req.pixels != "auto":
        bounds = {"unit": (0.0, 1.0), "byte": (0.0, 255.0)}.get(req.pixels)
        if bounds is not None and (xmin < bounds[0] - 1e-3 or xmax > bounds[1] + 1e-3):
            raise NasProxyError(f"{req.source}: --pixels {req.pixels} expects {bounds[0]:g}..{bounds[1]:g}, but {span}")
        return req.pixels, "--pixels"
    if x.dtype == torch.uint8:
        return "byte", "uint8 pixels"
    if known == "normalized":
        # Normalized real images go below 0 (black pixels); a whole set inside [0, 1] is pixels.
        if xmin >= 0.0 and xmax <= 1.0 and bool((lo < -0.05).all()):
            raise NasProxyError(
                f"{req.source}: {span}, as [0, 1] pixels do, but {req.format} files hold normalized images; "
                "--pixels unit normalizes them, --pixels normalized takes them as they are"
            )
        if xmax > 25.0 and xmin >= 0.0:
            raise NasProxyError(
                f"{req.source}: {span}, as 0..255 pixels do, but {req.format} files hold normalized images; "
                "--pixels byte normalizes them, --pixels normalized takes them as they are"
            )
        return "normalized", f"the {req.format} convention"
    if xmin >= 0.0 and xmax <= 1.0:
        return "unit", "values in [0, 1]"
    if xmin >= 0.0 and xmax <= 255.0 and bool((x == x.round()).all()):
        return "byte", "whole values in 0..255"
    return "normalized", "values outside [0, 1] and 0..255"


def _normalize(x: torch.Tensor, scale: str, why: str, ref: Split, notes: list[str]) -> torch.Tensor:
    x = x.to(torch.float32)
    mean = torch.tensor(ref.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(ref.std, dtype=torch.float32).view(1, -1, 1, 1)
    stats = f"{_shown(ref)}'s mean {_fmt(mean.flatten(), 4)} and std {_fmt(std.flatten(), 4)}"
    if scale == "normalized":
        notes.append(f"images taken as normalized with {stats} ({why})")
        return x
    divide = " / 255" if scale == "byte" else ""
    notes.append(f"pixels ({scale}: {why}) converted to the normalized space: (x{divide} - mean) / std with {stats}")
    if scale == "byte":
        x = x / 255.0
    return (x - mean) / std


def _range_note(x: torch.Tensor, ref: Split, lo: torch.Tensor, hi: torch.Tensor, notes: list[str]) -> None:
    """Say how the set's values sit against the real data's; warn when they look like another scale."""
    xmin, xmax, mean, std = _channel_stats(x)
    outside = ((x < lo.view(1, -1, 1, 1)) | (x > hi.view(1, -1, 1, 1))).float().mean().item()
    notes.append(
        f"values {_fmt(xmin)}..{_fmt(xmax)} (real {_shown(ref)} images: {_fmt(lo)}..{_fmt(hi)}), "
        f"{100 * outside:.1f}% outside; per-channel mean {_fmt(mean)}, std {_fmt(std)}"
    )
    # Learned images drift beyond the real range (they are not clipped), but not by orders of magnitude.
    if bool((mean.abs() > 3).any()) or bool((std > 10).any()) or bool((std < 0.02).any()):
        notes.append("warning: mean or std far from normalized data's (about 0 and 1): is --pixels right?")


# ----------------------------------------------------------------------------- import


def import_proxy(
    source: str | Path,
    *,
    format: str,
    dataset: str,
    index: int | None = None,
    method: str | None = None,
    pixels: str = "auto",
    soft_labels: str = "refuse",
    labels: str | Path | None = None,
    keys: tuple[str, str] | None = None,
    build_seconds: float = 0.0,
) -> ImportResult:
    """Read an outside file safely, check it against ``dataset``, and wrap it as a ProxySet (not saved).

    ``index``: the experiment of a dc-official file (default 0); ``method``: the name reports show
    (default: a dc-official file's own, else ``imported``); ``pixels``: the file's pixel scale
    (``PIXEL_SCALES``); ``soft_labels``: ``refuse`` or ``argmax``; ``labels``: the label file of
    an image-only tensors file; ``keys``: the (images, labels) names in an .npz or dict;
    ``build_seconds``: what the outside build took (0: unknown), for the report's build time.
    """
    if format not in IMPORT_FORMATS:
        raise UnknownNameError("import format", format, IMPORT_FORMATS)
    if pixels not in PIXEL_SCALES:
        raise UnknownNameError("pixel scale", pixels, PIXEL_SCALES)
    if soft_labels not in SOFT_LABELS:
        raise UnknownNameError("soft-label handling", soft_labels, SOFT_LABELS)
    owners: dict[str, tuple[Any, tuple[str, ...]]] = {
        "--index": (index, ("dc-official",)),
        "--labels": (labels, ("tensors",)),
        "--keys": (keys, ("npz", "tensors")),
    }
    for option, (given, formats) in owners.items():
        if given is not None and format not in formats:
            raise NasProxyError(f"{option} applies to {' and '.join(formats)} files, not {format}")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
        raise NasProxyError(f"--index must be a non-negative integer, got {index!r}")
    if method is not None and not _METHOD_NAME.fullmatch(method):
        raise NasProxyError(f"method name {method!r} must be letters, digits and _.+- (it goes into ids and paths)")
    if not (isinstance(build_seconds, int | float) and 0 <= build_seconds < float("inf")):
        raise NasProxyError(f"--build-seconds must be a non-negative number, got {build_seconds!r}")
    path = Path(source).expanduser()
    if not path.exists():
        raise NasProxyError(f"source {str(path)!r} does not exist")
    req = ImportRequest(path, format, dataset, index, method, pixels, soft_labels,
                        None if labels is None else Path(labels).expanduser(), keys, float(build_seconds))

    raw = IMPORT_FORMATS[format](req)
    ref = dataset_reference(dataset)
    notes = list(raw.notes)
    x = _to_nchw(raw.images.detach().cpu(), ref, path, notes)
    if x.dtype == torch.bool or x.is_complex():
        raise NasProxyError(f"{path}: images must be real numbers, got dtype {x.dtype}")
    if not bool(torch.isfinite(x.float()).all()):
        raise NasProxyError(f"{path}: images contain NaN or infinity")
    y = _hard_labels(raw.labels.detach().cpu(), x.shape[0], ref.num_classes, soft_labels, path, notes)
    x, y, ipc = _class_order(x, y, ref.num_classes, path, notes)
    lo, hi = _real_range(ref)
    scale, why = _choose_scale(x, req, raw.scale, lo)
    x = _normalize(x, scale, why, ref, notes)
    _range_note(x, ref, lo, hi, notes)
    if "file_ipc" in raw.details and raw.details["file_ipc"] != ipc:
        notes.append(f"warning: the file name says {raw.details['file_ipc']} images per class, the data holds {ipc}")

    name = method or raw.method or "imported"
    origin: dict[str, Any] = {
        "format": format,
        "source": raw.files[0].name,
        "sha256": _sha256(raw.files[0]),
        "index": index if index is not None else (0 if format == "dc-official" else None),
        "method": name,
        "pixels": scale,
        **raw.details,
        "notes": notes,
    }
    if len(raw.files) > 1:
        origin.update(labels_source=raw.files[1].name, labels_sha256=_sha256(raw.files[1]))
    proxy = make_proxy_set(
        x, y, method=name, params={}, source=ref, ipc=ipc, seed=origin["index"] or 0,
        build_seconds=req.build_seconds, origin=origin,
    )
    return ImportResult(proxy, tuple(notes))
