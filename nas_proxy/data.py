"""Datasets as normalized tensors resident on one device (no DataLoader for in-memory data).

``load_dataset(name)`` -> ``(train, test)`` Splits. Pixels go to [0, 1], then per-channel
``(x - mean) / std`` with the reference statistics (REFERENCE.md section 2); a user's own data
gets mean and std computed from its training images.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nas_proxy.device import resolve_device
from nas_proxy.errors import DataNotFoundError, NasProxyError, UnknownNameError, one_line
from nas_proxy.validate import check_classes, check_finite, check_labels, check_same_shape, read_npz, to_nchw

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True, eq=False)
class Split:
    """Images (N, C, H, W) float32 normalized, labels (N,) int64, and where they came from.

    ``dataset`` is the dataset's id: a registered name (``fashionmnist``), or for own data a
    content hash (``data-3fa2c1d9e0b7``), so the same data is the same dataset through any path
    and other data at the same path is not.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    dataset: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # Own data: the resolved path it was loaded from (where to find it again); "" otherwise.
    origin: str = ""

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise NasProxyError(f"{self.dataset}: images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise NasProxyError(
                f"{self.dataset}: {self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __sizeof__(self) -> int:
        # What Dask's sizeof sees (it falls back to sys.getsizeof): the tensors' bytes, so a
        # cluster's memory accounting counts a shared training set for what it holds.
        return object.__sizeof__(self) + sum(t.numel() * t.element_size() for t in (self.images, self.labels))

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> Split:
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def subset(self, indices: torch.Tensor | list[int]) -> Split:
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.labels.device)
        return replace(self, images=self.images[idx], labels=self.labels[idx])

    def indices_of_class(self, c: int) -> torch.Tensor:
        return torch.nonzero(self.labels == c).flatten()

    def random_subset(self, n: int, seed: int) -> Split:
        """``n`` images drawn without replacement with a seeded generator."""
        if not 1 <= n <= len(self):
            raise NasProxyError(f"subset size must be between 1 and {len(self)}, got {n}")
        g = torch.Generator().manual_seed(seed)
        return self.subset(torch.randperm(len(self), generator=g)[:n].to(self.labels.device))


def check_pair(train: Split, test: Split, what: str = "the training data") -> None:
    """Raise unless nets trained on ``train`` can be scored on ``test``: same image shape, same classes.

    ``what`` names the training side in the message (``"proxy dc-ipc10-..."``). The one check of
    its kind: the evaluator, the Optuna objective and ``eval-proxy`` all ask it.
    """
    shape, want = tuple(train.images.shape[1:]), tuple(test.images.shape[1:])
    if shape != want:
        raise NasProxyError(f"{what} has images of shape {shape} but the test set {test.dataset} has {want}")
    if train.num_classes != test.num_classes:
        raise NasProxyError(
            f"{what} has {train.num_classes} classes but the test set {test.dataset} has {test.num_classes}"
        )


@dataclass(frozen=True)
class DatasetInfo:
    """The reference preprocessing of a named dataset."""

    name: str
    channels: int
    size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo("mnist", 1, 28, 10, (0.1307,), (0.3081,)),
        DatasetInfo("fashionmnist", 1, 28, 10, (0.2861,), (0.3530,)),
        DatasetInfo("svhn", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
        DatasetInfo("cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
        DatasetInfo("cifar100", 3, 32, 100, (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    )
}

# uint8 (or [0,1] float) arrays: x_train, y_train, x_test, y_test (images NCHW once validated).
RawArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
SPLIT_ARRAYS: tuple[str, ...] = ("x_train", "y_train", "x_test", "y_test")


def list_datasets() -> list[str]:
    """Named datasets; a path to an ``.npz`` file or an image-folder root also works."""
    return [*DATASETS, "synthetic"]


def cache_dir() -> Path:
    """``$NAS_PROXY_CACHE``, else ``~/.cache/nas-proxy``: raw downloads and decoded tensors."""
    return Path(os.environ.get("NAS_PROXY_CACHE", Path.home() / ".cache" / "nas-proxy"))


# ----------------------------------------------------------------------------- readers


def read_idx(path: Path) -> np.ndarray:
    """An MNIST-style idx file (optionally gzipped) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise NasProxyError(f"{path}: not an unsigned-byte idx file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise NasProxyError(f"{path}: truncated idx file ({len(data)} bytes, expected {expected})")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx_dir(name: str, root: Path | None) -> Path | None:
    stem = "train-images-idx3-ubyte"
    candidates = [root, root / "raw" if root else None]
    if name == "fashionmnist":
        candidates.append(DEBIAN_FASHION_MNIST)
    for d in candidates:
        if d is not None and any((d / (stem + ext)).exists() for ext in (".gz", "")):
            return d
    return None


def _read_idx_dir(d: Path) -> RawArrays:
    def one(stem: str) -> np.ndarray:
        for ext in (".gz", ""):
            if (d / (stem + ext)).exists():
                return read_idx(d / (stem + ext))
        raise DataNotFoundError(f"{d}: missing {stem}(.gz)")

    x_train, y_train = one("train-images-idx3-ubyte"), one("train-labels-idx1-ubyte")
    x_test, y_test = one("t10k-images-idx3-ubyte"), one("t10k-labels-idx1-ubyte")
    return x_train[:, None], y_train, x_test[:, None], y_test


_HOW_TO_GET = {
    "fashionmnist": "install Debian's package (apt-get install dataset-fashion-mnist), pass --data-root "
    "to a folder with the idx .gz files, or go online so torchvision can download it",
    "mnist": "pass --data-root to a folder with the MNIST idx .gz files, or go online so torchvision can download it",
}


def _torchvision_arrays(name: str, root: Path) -> RawArrays:
    # Here, not at the top: importing torchvision's datasets takes seconds on top of torch's, and
    # only a download of a named dataset needs them (idx folders and .npz files do not).
    import torchvision.datasets as tvd

    def load(train: bool) -> tuple[np.ndarray, np.ndarray]:
        if name == "svhn":
            ds = tvd.SVHN(str(root), split="train" if train else "test", download=True)
            return np.asarray(ds.data), np.asarray(ds.labels)
        cls = {"mnist": tvd.MNIST, "fashionmnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}
        ds = cls[name](str(root), train=train, download=True)
        x = np.asarray(ds.data)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # NHW or NHWC -> NCHW
        return x, np.asarray(ds.targets)

    try:
        return (*load(True), *load(False))
    except Exception as exc:  # network errors come in many types; all mean "not here"
        how = _HOW_TO_GET.get(name, "go online so torchvision can download it, or pass --data-root to its files")
        why = one_line(f"{type(exc).__name__}: {exc}", 240)
        raise DataNotFoundError(f"dataset {name!r} not found under {root} and download failed ({why}); {how}") from exc


def _named_arrays(name: str, root: Path | None) -> RawArrays:
    if name in ("mnist", "fashionmnist"):
        found = _find_idx_dir(name, root)
        if found is not None:
            return _read_idx_dir(found)
    return _torchvision_arrays(name, root or cache_dir() / "downloads")


def _npz_arrays(path: Path) -> RawArrays:
    f = read_npz(path, SPLIT_ARRAYS, "dataset file")
    return f["x_train"], f["y_train"], f["x_test"], f["y_test"]


def _read_image(path: Path) -> np.ndarray:
    """One image file as an (H, W) or (H, W, C) array; palettes and alpha become RGB."""
    try:
        with Image.open(path) as im:
            return np.asarray(im if im.mode in ("L", "RGB") else im.convert("RGB"))
    except Exception as exc:  # PIL raises many types on a damaged or foreign file (even SyntaxError)
        why = one_line(f"{type(exc).__name__}: {exc}", 160)
        raise NasProxyError(f"{path}: not a readable image ({why}); remove or replace it") from exc


def _folder_arrays(root: Path) -> RawArrays:
    def class_dirs(split: str) -> list[str]:
        return sorted(p.name for p in (root / split).iterdir() if p.is_dir() and not p.name.startswith("."))

    classes = class_dirs("train")
    if not classes:
        raise NasProxyError(f"{root}/train has no class folders; put each class's images in train/<class>/")
    foreign = sorted(set(class_dirs("test")) - set(classes))
    if foreign:
        raise NasProxyError(
            f"{root}/test has class folders {', '.join(foreign[:5])} that train/ lacks; "
            "every class needs training images"
        )
    parts = []
    for split in ("train", "test"):
        xs, ys = [], []
        for label, cls in enumerate(classes):
            folder = root / split / cls
            found = folder.glob("*") if folder.is_dir() else ()
            files = sorted(f for f in found if f.is_file() and not f.name.startswith("."))
            if split == "train" and not files:
                raise NasProxyError(f"{folder} holds no images; add some or remove the folder")
            xs += [_read_image(f) for f in files]
            ys += [label] * len(files)
        if not xs:
            raise NasProxyError(f"{root}/{split} holds no images in class folders {', '.join(classes)}")
        shapes = {x.shape for x in xs}
        if len(shapes) != 1:
            raise NasProxyError(
                f"{root}/{split}: images differ in shape {sorted(shapes)[:3]}; bring them to one size and mode"
            )
        parts += [np.stack(xs), np.asarray(ys, dtype=np.int64)]
    x_train, y_train, x_test, y_test = parts
    return x_train, y_train, x_test, y_test


# ----------------------------------------------------------------------------- assembling


def _source(name: str) -> tuple[str, Path | None]:
    """(kind, path): a registered name, or a user's ``.npz`` file / image-folder root."""
    if name.lower() in DATASETS or name.lower() == "synthetic":
        return name.lower(), None
    path = Path(name).expanduser()
    if path.suffix == ".npz":
        if not path.is_file():
            raise DataNotFoundError(f"dataset file {str(path)!r} does not exist")
        return "npz", path
    if path.is_dir():
        if not (path / "train").is_dir() or not (path / "test").is_dir():
            raise NasProxyError(f"image folder {str(path)!r} must contain train/ and test/ with one folder per class")
        return "folder", path
    raise UnknownNameError("dataset", name, [*list_datasets(), "PATH.npz", "IMAGE_FOLDER"])


def _cached(key: str, make: Callable[[], RawArrays]) -> RawArrays:
    """Decoded raw arrays are kept as one ``.npz`` so the second load skips decoding."""
    path = cache_dir() / "decoded" / f"{key}.npz"
    if path.exists():
        try:
            f = read_npz(path, SPLIT_ARRAYS, "decoded dataset")
            return f["x_train"], f["y_train"], f["x_test"], f["y_test"]
        except NasProxyError:
            path.unlink(missing_ok=True)  # a broken cache is rebuilt, never trusted
    arrays = make()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{key}.{os.getpid()}.tmp.npz")  # per process: two loads never share one
        np.savez(tmp, x_train=arrays[0], y_train=arrays[1], x_test=arrays[2], y_test=arrays[3])
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache only costs speed
    return arrays


def _source_key(kind: str, path: Path) -> str:
    """Changes when the file (or any file under the folder) changes: the key of the decoded cache."""
    h = hashlib.sha256(str(path.resolve()).encode())
    if kind == "npz":
        st = path.stat()
        h.update(f":{st.st_mtime_ns}:{st.st_size}".encode())
    else:  # a folder's own mtime misses edits inside its class folders: stat every file
        for folder, subdirs, files in os.walk(path):
            subdirs.sort()
            h.update(f"{os.path.relpath(folder, path)}/\n".encode())  # an empty class folder counts too
            for name in sorted(files):
                file = os.path.join(folder, name)
                st = os.stat(file)
                h.update(f"{os.path.relpath(file, path)}:{st.st_mtime_ns}:{st.st_size}\n".encode())
    return h.hexdigest()[:16]


def content_hash(arrays: RawArrays) -> str:
    """SHA-256 of the (validated) arrays: dtype, shape and bytes of each, in split order."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def _cached_hash(key: str, arrays: RawArrays) -> str:
    """:func:`content_hash`, cached beside the decoded arrays (hashing 200 MB takes a while)."""
    path = cache_dir() / "decoded" / f"{key}.sha256"
    try:
        text = path.read_text().strip()
        if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
            return text
    except OSError:
        pass
    digest = content_hash(arrays)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(digest + "\n")
        tmp.replace(path)
    except OSError:
        pass
    return digest


def dataset_id(digest: str) -> str:
    """``data-<12 hex of the content hash>``: what proxies and results stores call own data.

    The content alone: the same data under any path or file name is one dataset, and other
    data at a known path is another (where it was is kept beside, as ``Split.origin``).
    """
    return f"data-{digest[:12]}"


def _scale(x: np.ndarray) -> torch.Tensor:
    """Pixels as float32: uint8 to [0, 1]; other numbers as they are (own data's statistics normalize them)."""
    if x.dtype == np.uint8:
        return torch.from_numpy(np.require(x, requirements=["C", "W"])).float().div_(255.0)
    with np.errstate(over="ignore", invalid="ignore"):  # 1e39 becomes inf: check_finite names it
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def checked_arrays(arrays: RawArrays, source: str, num_classes: int | None = None) -> tuple[RawArrays, int]:
    """Raw arrays as validated NCHW images and int64 labels, and the class count (:mod:`nas_proxy.validate`).

    ``num_classes`` is a named dataset's count; own data has max label + 1 classes.
    """
    x_train, x_test = to_nchw(arrays[0], source, "x_train"), to_nchw(arrays[2], source, "x_test")
    y_train = check_labels(arrays[1], len(x_train), source, "y_train")
    y_test = check_labels(arrays[3], len(x_test), source, "y_test")
    classes = check_classes(y_train, y_test, source, num_classes)
    return (x_train, y_train, x_test, y_test), classes


def load_dataset(
    name: str,
    root: str | Path | None = None,
    device: str | torch.device | None = None,
) -> tuple[Split, Split]:
    """``(train, test)`` of a named dataset, a ``.npz`` file or an image folder, validated and normalized.

    Named datasets: mnist, fashionmnist, svhn, cifar10, cifar100 (torchvision downloads them
    when online; Fashion-MNIST is also found where Debian's ``dataset-fashion-mnist`` put it),
    and ``synthetic`` (a small learnable set for tests). Every source is checked
    (:mod:`nas_proxy.validate`): bad data raises one :class:`NasProxyError` naming the file, the
    problem and the fix. Own data's id is its content hash (:func:`dataset_id`).
    """
    kind, path = _source(name)
    dev = resolve_device(device)
    if kind == "synthetic":
        train, test = make_synthetic()
        return train.to(dev), test.to(dev)
    root_path = Path(root).expanduser() if root is not None else None
    if kind in DATASETS:
        info = DATASETS[kind]
        key = (
            kind if root_path is None else f"{kind}-{hashlib.sha256(str(root_path.resolve()).encode()).hexdigest()[:8]}"
        )
        source = kind if root_path is None else f"{kind} under {root_path}"
        arrays, classes = checked_arrays(_cached(key, lambda: _named_arrays(kind, root_path)), source, info.num_classes)
        if arrays[0].shape[1] != info.channels:
            raise NasProxyError(f"{source}: {arrays[0].shape[1]}-channel images, but {kind} has {info.channels}")
        ident, origin = kind, ""
    else:
        assert path is not None
        reader = _npz_arrays if kind == "npz" else _folder_arrays
        key = f"{kind}-{_source_key(kind, path)}"
        source = str(path)
        arrays, classes = checked_arrays(_cached(key, lambda: reader(path)), source)
        ident, origin = dataset_id(_cached_hash(key, arrays)), str(path.resolve())
    x_train, x_test = _scale(arrays[0]), _scale(arrays[2])
    check_finite(x_train, source, "x_train")
    check_finite(x_test, source, "x_test")
    check_same_shape(x_train, x_test, source)
    if kind in DATASETS:
        mean, std = info.mean, info.std
    else:
        mean = tuple(x_train.mean(dim=(0, 2, 3)).tolist())
        std = tuple(x_train.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist())
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    train, test = (
        Split(((x - m) / s).to(dev), torch.from_numpy(y).to(dev), classes, ident, mean, std, origin)
        for x, y in ((x_train, arrays[1]), (x_test, arrays[3]))
    )
    # Finite pixels near float32's limit (3e38) still overflow in the mean, the std or x - mean.
    finite = math.isfinite(sum(mean)) and math.isfinite(sum(std))
    if not (finite and bool(torch.isfinite(train.images).all()) and bool(torch.isfinite(test.images).all())):
        raise NasProxyError(f"{source}: pixel values too large to normalize in float32; scale them to [0, 1]")
    return train, test


def make_synthetic(
    num_classes: int = 10,
    train_per_class: int = 60,
    test_per_class: int = 20,
    channels: int = 1,
    size: int = 28,
    noise: float = 0.8,
    seed: int = 0,
) -> tuple[Split, Split]:
    """A small learnable dataset: each class a smooth random prototype plus Gaussian noise.

    Already in normalized space (mean about 0, std about 1); for tests and smoke runs.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, channels, 7, 7, generator=g)
    protos = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)

    def draw(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        x = protos[labels] + noise * torch.randn(len(labels), channels, size, size, generator=g)
        return x, labels

    stats = (0.0,) * channels, (1.0,) * channels
    (xa, ya), (xb, yb) = draw(train_per_class), draw(test_per_class)
    return (
        Split(xa, ya, num_classes, "synthetic", *stats),
        Split(xb, yb, num_classes, "synthetic", *stats),
    )
