"""Own data is checked at load (one line: file, problem, fix) and identified by its content."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nas_proxy.data import content_hash, load_dataset
from nas_proxy.errors import NasProxyError
from nas_proxy.validate import check_classes

RNG = np.random.default_rng(0)


def arrays(**change: Any) -> dict[str, Any]:
    """A valid small dataset (3 classes, 6x6 grey images), with some arrays replaced."""
    good = {
        "x_train": RNG.integers(0, 256, (12, 6, 6), dtype=np.uint8),
        "y_train": np.arange(12) % 3,
        "x_test": RNG.integers(0, 256, (6, 6, 6), dtype=np.uint8),
        "y_test": np.arange(6) % 3,
    }
    return {**good, **change}


def save(path: Path, **change: Any) -> str:
    np.savez(path, **arrays(**change))
    return str(path)


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("huge label", {"y_train": np.r_[np.arange(11) % 3, 10**6]}, r"999997 of classes 0\.\.1000000 have no training"),
    ("gap", {"y_train": np.arange(12) % 3 * 2, "y_test": np.arange(6) % 3 * 2}, r"classes 0\.\.4 .*\(e\.g\. 1, 3\)"),
    ("unseen test class", {"y_test": np.r_[np.arange(5) % 3, 12]}, r"test labels 12 are not among the training"),
    ("one class", {"y_train": np.zeros(12, int), "y_test": np.zeros(6, int)}, "only one class"),
    ("negative", {"y_train": np.r_[np.arange(11) % 3, -1]}, "negative training label -1"),
    ("float labels", {"y_train": (np.arange(12) % 3).astype(float)}, r"dtype float64; .*y\.astype\(np\.int64\)"),
    ("one-hot", {"y_train": np.eye(3)[np.arange(12) % 3].astype(int)}, r"shape \(N,\), got \(12, 3\) \(one-hot"),
    ("count", {"y_train": np.arange(11) % 3}, "12 images but 11 labels in y_train"),
    ("nan", {"x_train": np.where(np.arange(12)[:, None, None] == 4, np.nan, np.ones((12, 6, 6)))},
     r"x_train has 36 NaN or infinite pixel values \(first in image 4\)"),
    ("inf", {"x_test": np.full((6, 6, 6), np.inf)}, "x_test has 216 NaN or infinite"),
    ("float64 beyond float32", {"x_train": np.full((12, 6, 6), 1e300)}, "NaN or infinite"),
    ("near float32's limit", {"x_test": np.full((6, 6, 6), -3e38, np.float32)}, "too large to normalize"),
    ("empty train", {"x_train": np.zeros((0, 6, 6)), "y_train": np.zeros(0, int)}, r"x_train is empty \(0 images\)"),
    ("empty test", {"x_test": np.zeros((0, 6, 6)), "y_test": np.zeros(0, int)}, "x_test is empty"),
    ("strings", {"x_train": np.full((12, 6, 6), "a")}, "dtype <U1; images must be numbers"),
    ("complex", {"x_train": np.ones((12, 6, 6), complex)}, "dtype complex128"),
    ("2-d images", {"x_train": np.ones((12, 36))}, r"must be \(N,H,W\), \(N,H,W,C\) or \(N,C,H,W\)"),
    ("not square", {"x_train": np.ones((12, 6, 8)), "x_test": np.ones((6, 6, 8))}, "6x8; the ConvNets need square"),
    ("shapes differ", {"x_test": np.ones((6, 8, 8))}, r"train images are \(1, 6, 6\) and test images \(1, 8, 8\)"),
]


@pytest.mark.parametrize(("what", "change", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_npz_datasets_fail_in_one_line_naming_the_file(
    tmp_path: Path, what: str, change: dict[str, Any], message: str
) -> None:
    path = save(tmp_path / "mine.npz", **change)
    with pytest.raises(NasProxyError, match=message) as info:
        load_dataset(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text


def test_object_and_pickle_files_are_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "obj.npz"
    np.savez(path, **arrays(y_train=np.array([Boom()] * 12, dtype=object)))
    with pytest.raises(NasProxyError, match=r"holds Python objects .* never loaded"):
        load_dataset(str(path))
    pickled = tmp_path / "p.npz"
    pickled.write_bytes(__import__("pickle").dumps(Boom()))
    with pytest.raises(NasProxyError, match="a pickle, which is never loaded"):
        load_dataset(str(pickled))
    assert not Boom.unpickled


class Boom:
    """Records being unpickled (a real attack would run code there instead)."""

    unpickled = False

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_unpickle, ())


def _unpickle() -> Boom:
    Boom.unpickled = True
    return Boom()


def test_valid_variants_load(tmp_path: Path) -> None:
    # NHWC floats in [0, 1], bool images, uint16 labels and (N, 1) label columns are all fine.
    path = save(
        tmp_path / "ok.npz",
        x_train=RNG.random((12, 6, 6, 3)).astype(np.float32),
        x_test=RNG.random((6, 6, 6, 3)) > 0.5,
        y_train=(np.arange(12) % 3).astype(np.uint16)[:, None],
    )
    train, test = load_dataset(path)
    assert train.images.shape == (12, 3, 6, 6) and test.images.shape == (6, 3, 6, 6)
    assert train.num_classes == 3 and train.labels.dtype == torch.int64
    assert bool(torch.isfinite(train.images).all())


def test_named_dataset_classes_follow_the_registry() -> None:
    y = np.arange(20) % 10
    assert check_classes(y, y[:5], "mnist", num_classes=10) == 10
    with pytest.raises(NasProxyError, match=r"training label 12 outside 0\.\.9"):
        check_classes(np.r_[y, 12], y, "mnist", num_classes=10)


def test_identity_is_the_content_not_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = save(tmp_path / "mine.npz")
    (tmp_path / "sub").mkdir()
    b = shutil.copy(a, tmp_path / "sub" / "mine.npz")
    train_a, _ = load_dataset(a)
    monkeypatch.chdir(tmp_path / "sub")
    train_b, _ = load_dataset("mine.npz")  # another path, relative: the same data, the same dataset
    assert train_a.dataset == train_b.dataset and train_a.dataset.startswith("data-")
    assert len(train_a.dataset) == len("data-") + 12 and train_b.origin == str(Path(b).resolve())
    save(Path(b), x_test=RNG.integers(0, 256, (6, 6, 6), dtype=np.uint8))  # other data at the same path
    os.utime(b, ns=(1, 1))
    train_c, _ = load_dataset("mine.npz")
    assert train_c.dataset != train_b.dataset and train_c.dataset.startswith("data-")


def test_the_content_hash_is_cached_and_covers_every_array(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(tmp_path / "mine.npz")
    first, _ = load_dataset(path)
    import nas_proxy.data as data_module

    def boom(arrays: object) -> str:
        raise AssertionError("hashed again")

    monkeypatch.setattr(data_module, "content_hash", boom)
    again, _ = load_dataset(path)
    assert again.dataset == first.dataset
    x = np.zeros((2, 1, 2, 2), np.uint8)
    y = np.arange(2)
    base = content_hash((x, y, x, y))
    assert content_hash((x, y, x, y[::-1].copy())) != base  # test labels count
    assert content_hash((x.astype(np.float32), y, x, y)) != base  # so do dtypes


def _png(path: Path, size: int = 6, mode: str = "L") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"L": (size, size), "RGB": (size, size, 3), "RGBA": (size, size, 4)}[mode]
    Image.fromarray(RNG.integers(0, 256, channels, dtype=np.uint8), mode=mode).save(path)


def test_image_folders_are_checked(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for split, n in (("train", 2), ("test", 1)):
        for cls in ("a", "b"):
            for i in range(n):
                _png(root / split / cls / f"{i}.png")
    (root / "train" / "a" / ".DS_Store").write_bytes(b"\0junk")  # hidden files are not images
    train, test = load_dataset(str(root))
    assert (len(train), len(test), train.num_classes) == (4, 2, 2) and train.dataset.startswith("data-")
    first = train.dataset
    _png(root / "train" / "b" / "2.png")  # an edit inside a class folder is a new dataset
    assert load_dataset(str(root))[0].dataset != first

    (root / "train" / "b" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(NasProxyError, match=r"bad\.png: not a readable image .*; remove or replace it"):
        load_dataset(str(root))
    (root / "train" / "b" / "bad.png").unlink()
    _png(root / "test" / "c" / "0.png")
    with pytest.raises(NasProxyError, match="test has class folders c that train/ lacks"):
        load_dataset(str(root))
    shutil.rmtree(root / "test" / "c")
    (root / "train" / "empty").mkdir()
    with pytest.raises(NasProxyError, match=r"train/empty holds no images"):
        load_dataset(str(root))
    (root / "train" / "empty").rmdir()
    _png(root / "train" / "a" / "rgba.png", mode="RGBA")
    with pytest.raises(NasProxyError, match="images differ in shape"):
        load_dataset(str(root))
