from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nas_proxy.data import DEBIAN_FASHION_MNIST, load_dataset, make_synthetic, read_idx
from nas_proxy.errors import DataNotFoundError, NasProxyError, UnknownNameError


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_mnist_dir(root: Path, n_train: int = 40, n_test: int = 20) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    _write_idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    _write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    _write_idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)
    return root


def test_idx_root_is_read_and_normalized_with_reference_stats(tmp_path: Path) -> None:
    root = _fake_mnist_dir(tmp_path / "fm")
    train, test = load_dataset("fashionmnist", root=root)
    assert (len(train), len(test)) == (40, 20)
    assert train.images.shape == (40, 1, 28, 28) and train.labels.dtype == torch.int64
    raw = read_idx(root / "train-images-idx3-ubyte.gz")
    expected = (raw[0] / 255.0 - 0.2861) / 0.3530
    assert np.allclose(train.images[0, 0].numpy(), expected, atol=1e-5)
    assert train.mean == (0.2861,) and train.num_classes == 10 and train.dataset == "fashionmnist"
    # Second load comes from the decoded cache and is identical.
    again, _ = load_dataset("fashionmnist", root=root)
    assert torch.equal(again.images, train.images)


def test_truncated_idx_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">BBBBI", 0, 0, 8, 1, 100) + b"\0" * 10)
    with pytest.raises(NasProxyError, match="truncated"):
        read_idx(path)


def test_npz_nhwc_uint8_gets_computed_stats(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "mine.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (30, 16, 16, 3), dtype=np.uint8),
        y_train=np.arange(30) % 3,
        x_test=rng.integers(0, 256, (9, 16, 16, 3), dtype=np.uint8),
        y_test=np.arange(9) % 3,
    )
    train, test = load_dataset(str(path))
    assert train.images.shape == (30, 3, 16, 16) and test.images.shape == (9, 3, 16, 16)
    assert train.num_classes == 3
    assert torch.allclose(train.images.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(train.images.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-2)


def test_npz_float_nchw(tmp_path: Path) -> None:
    path = tmp_path / "f.npz"
    x = np.random.default_rng(2).random((12, 1, 8, 8)).astype(np.float32)
    np.savez(path, x_train=x, y_train=np.arange(12) % 2, x_test=x[:4], y_test=np.arange(4) % 2)
    train, _ = load_dataset(str(path))
    assert train.images.shape == (12, 1, 8, 8) and train.num_classes == 2


def test_npz_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.zeros((2, 8, 8)))
    with pytest.raises(NasProxyError, match=r"not a dataset file \(missing y_train, x_test, y_test\)"):
        load_dataset(str(path))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(NasProxyError, match=r"not an \.npz file \(unknown format\)"):
        load_dataset(str(junk))
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset(str(tmp_path / "absent.npz"))


def test_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("cat", "dog"):
            d = tmp_path / "imgs" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(d / f"{i}.png")
    train, test = load_dataset(str(tmp_path / "imgs"))
    assert train.images.shape == (8, 3, 12, 12) and test.images.shape == (4, 3, 12, 12)
    assert train.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_unknown_dataset_lists_valid() -> None:
    with pytest.raises(UnknownNameError, match="fashionmnist"):
        load_dataset("imagenet")


def test_synthetic_is_learnable_shape_and_deterministic() -> None:
    a_train, a_test = make_synthetic(num_classes=4, train_per_class=5, test_per_class=2, seed=1)
    b_train, _ = make_synthetic(num_classes=4, train_per_class=5, test_per_class=2, seed=1)
    assert torch.equal(a_train.images, b_train.images)
    assert a_train.images.shape == (20, 1, 28, 28) and len(a_test) == 8
    assert a_train.labels.tolist() == sorted(a_train.labels.tolist())


def test_split_subset_and_validation() -> None:
    train, _ = make_synthetic(num_classes=2, train_per_class=5, test_per_class=1)
    sub = train.random_subset(4, seed=0)
    assert len(sub) == 4 and torch.equal(sub.images, train.random_subset(4, seed=0).images)
    with pytest.raises(NasProxyError, match="between 1 and 10"):
        train.random_subset(11, seed=0)
    with pytest.raises(NasProxyError, match="labels of shape"):
        type(train)(train.images, train.labels[:3], 2, "x", (0.0,), (1.0,))


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist() -> None:
    train, test = load_dataset("fashionmnist")
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.images.shape[1:] == (1, 28, 28)
    assert sorted(train.labels.unique().tolist()) == list(range(10))
    assert abs(float(train.images.mean())) < 0.01 and abs(float(train.images.std()) - 1) < 0.01


def test_check_pair_names_the_training_side_and_the_mismatch() -> None:
    from nas_proxy.data import check_pair

    train, test = make_synthetic(num_classes=4, train_per_class=2, test_per_class=2, size=12, seed=0)
    check_pair(train, test)
    _, other = make_synthetic(num_classes=4, train_per_class=2, test_per_class=2, size=16, seed=0)
    with pytest.raises(NasProxyError, match=r"proxy p has images of shape \(1, 12, 12\) but the test set"):
        check_pair(train, other, "proxy p")
    _, fewer = make_synthetic(num_classes=3, train_per_class=2, test_per_class=2, size=12, seed=0)
    with pytest.raises(NasProxyError, match="has 4 classes but the test set synthetic has 3"):
        check_pair(train, fewer)
