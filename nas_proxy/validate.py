"""Checks on what comes in: a dataset's arrays, and ``.npz`` files read without ever unpickling.

Each check raises :class:`NasProxyError` with one line naming the source, the problem and the
fix. Bad data must cost a user one line of reading, not minutes of training on nonsense: a
single label of 1e6 once built a million-class head and trained for 7 minutes to 0.00 %, NaN
pixels made every run "diverged", a one-class dataset scored 100 %.

The rules, for every source (own ``.npz``, image folders, named datasets):

- images: numbers (integers, floats or bools; not objects, strings or records), shaped
  (N, C, H, W) with square sides, at least one per split, train and test of one shape, finite;
- labels: one integer per image, 0..C-1 with C >= 2 and every class present in training;
  test labels among the training classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from nas_proxy.errors import NasProxyError, one_line

# dtype kinds that hold pixel values: bool, signed, unsigned, float.
IMAGE_KINDS = "biuf"
LABEL_KINDS = "iu"
RELABEL = "relabel to 0..C-1, e.g. y = np.unique(y_train, return_inverse=True)[1]"


# ----------------------------------------------------------------------------- reading .npz files


def read_npz(path: str | Path, required: Sequence[str], what: str = "file") -> dict[str, np.ndarray]:
    """The ``required`` arrays of the ``.npz`` at ``path``; any fault is one :class:`NasProxyError`.

    Never unpickles: object arrays (and pickled files) are refused, not loaded. Damaged bytes
    make numpy and zipfile raise many types (BadZipFile, EOFError, zlib.error, ValueError,
    tokenize errors, MemoryError for a forged shape): all become "corrupted or truncated".
    ``what`` names the kind of file in messages ("proxy file", "dataset").
    """
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            magic = raw.read(6)
        # np.load would take any other bytes for a pickle: say what the file is instead.
        if magic.startswith(b"\x93NUMPY"):
            raise NasProxyError(f"{path}: a single .npy array, not an .npz archive of named arrays; save with np.savez")
        if magic[:1] == b"\x80":
            raise NasProxyError(f"{path}: a pickle, which is never loaded (it can run code); save with np.savez")
        if not magic:
            raise NasProxyError(f"{path}: an empty file (corrupted or truncated)")
        if not magic.startswith(b"PK"):
            raise NasProxyError(f"{path}: not an .npz file (unknown format)")
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise NasProxyError(f"{path}: not an .npz archive of named arrays; save with np.savez")
        with loaded as f:
            missing = [k for k in required if k not in f.files]
            if missing:
                raise NasProxyError(
                    f"{path}: not a {what} (missing {', '.join(missing)}); it needs arrays {', '.join(required)}"
                )
            return {k: f[k] for k in required}
    except NasProxyError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise NasProxyError(
                f"{path}: holds Python objects (pickled arrays), which are never loaded: a file can run code "
                "that way; save plain numeric arrays"
            ) from exc
        raise _damaged(path, exc) from exc
    except Exception as exc:  # BadZipFile, EOFError, zlib.error, MemoryError, OSError, ...
        if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
            raise NasProxyError(f"{path}: cannot read it ({exc.strerror})") from exc
        raise _damaged(path, exc) from exc


def _damaged(path: Path, exc: BaseException) -> NasProxyError:
    return NasProxyError(f"{path}: corrupted or truncated ({one_line(f'{type(exc).__name__}: {exc}', 200)})")


# ----------------------------------------------------------------------------- dataset arrays


def to_nchw(x: np.ndarray, source: str, name: str) -> np.ndarray:
    """Images as (N, C, H, W): (N, H, W) gains a channel axis, NHWC is transposed (C <= 4 < H)."""
    if x.dtype.kind not in IMAGE_KINDS or x.dtype.fields is not None:
        raise NasProxyError(
            f"{source}: {name} has dtype {x.dtype}; images must be numbers (uint8 0-255 or floats in [0, 1]): "
            "convert with x.astype(np.float32)"
        )
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim != 4:
        raise NasProxyError(f"{source}: {name} must be (N,H,W), (N,H,W,C) or (N,C,H,W), got shape {x.shape}")
    elif x.shape[-1] <= 4 < x.shape[1]:  # channels are few (1, 3, 4); spatial sides are larger
        x = x.transpose(0, 3, 1, 2)
    if x.shape[0] == 0:
        raise NasProxyError(f"{source}: {name} is empty (0 images); a dataset needs training and test images")
    if min(x.shape[1:]) == 0:
        raise NasProxyError(f"{source}: {name} has an empty axis, shape {x.shape} (N, C, H, W)")
    if x.shape[2] != x.shape[3]:
        raise NasProxyError(
            f"{source}: {name} images are {x.shape[2]}x{x.shape[3]}; the ConvNets need square images: "
            "crop or pad them to one side"
        )
    return x


def check_labels(y: np.ndarray, images: int, source: str, name: str) -> np.ndarray:
    """One integer label per image, as int64 (N,); no range check here (see :func:`check_classes`)."""
    if y.dtype.kind not in LABEL_KINDS:
        hint = "use y.astype(np.int64)" if y.dtype.kind in "fb" else "labels are class numbers 0..C-1"
        raise NasProxyError(f"{source}: {name} has dtype {y.dtype}; labels must be integers ({hint})")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = " (one-hot? use y.argmax(1))" if y.ndim == 2 else ""
        raise NasProxyError(f"{source}: {name} must be one label per image, shape (N,), got {y.shape}{hint}")
    if y.shape[0] != images:
        raise NasProxyError(f"{source}: {images} images but {y.shape[0]} labels in {name}")
    if y.size and y.dtype.kind == "u" and int(y.max()) > np.iinfo(np.int64).max:
        raise NasProxyError(f"{source}: {name} holds labels beyond int64; {RELABEL}")
    return y.astype(np.int64)


def check_classes(y_train: np.ndarray, y_test: np.ndarray, source: str, num_classes: int | None = None) -> int:
    """The class count C: labels 0..C-1, every class in training, test among them, C >= 2.

    ``num_classes`` is the count a named dataset defines; own data takes max label + 1, so a gap
    in the labels (or one stray large label) is refused instead of training empty classes.
    """
    classes = np.unique(y_train)  # sorted; no bincount: a label of 1e18 must not allocate 1e18 counters
    if classes[0] < 0:
        raise NasProxyError(f"{source}: negative training label {int(classes[0])}; {RELABEL}")
    count = num_classes if num_classes is not None else int(classes[-1]) + 1
    if int(classes[-1]) >= count:
        raise NasProxyError(f"{source}: training label {int(classes[-1])} outside 0..{count - 1} of this dataset")
    if count < 2:
        raise NasProxyError(
            f"{source}: only one class (label {int(classes[0])}) in training; ranking needs at least two classes"
        )
    if len(classes) < count:
        absent = np.setdiff1d(np.arange(min(count, len(classes) + 6)), classes)[:5]
        shown = ", ".join(str(int(c)) for c in absent)
        raise NasProxyError(
            f"{source}: {count - len(classes)} of classes 0..{count - 1} have no training images (e.g. {shown}); "
            f"every class needs training images: {RELABEL}"
        )
    if y_test.size:
        unknown = np.setdiff1d(np.unique(y_test), classes)
        if unknown.size:
            shown = ", ".join(str(int(c)) for c in unknown[:5])
            raise NasProxyError(
                f"{source}: test labels {shown} are not among the training classes 0..{count - 1}; "
                "drop those test images or add training images of them"
            )
    return count


def check_finite(images: torch.Tensor, source: str, name: str) -> None:
    """No NaN or infinite pixel (after conversion to float32, where 1e39 becomes infinite too)."""
    finite = torch.isfinite(images)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        first = int(torch.nonzero(~finite.flatten(1).all(1))[0])
        raise NasProxyError(
            f"{source}: {name} has {bad} NaN or infinite pixel values (first in image {first}); "
            "replace or drop those images"
        )


def check_same_shape(train: torch.Tensor, test: torch.Tensor, source: str) -> None:
    if train.shape[1:] != test.shape[1:]:
        raise NasProxyError(
            f"{source}: train images are {tuple(train.shape[1:])} and test images {tuple(test.shape[1:])} "
            "(C, H, W); bring them to one shape"
        )
