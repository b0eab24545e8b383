from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nas_proxy.data import Split
from nas_proxy.errors import NasProxyError
from nas_proxy.log import Note
from nas_proxy.proxies import ProxySet, get_builder, load_proxy, save_proxy
from nas_proxy.proxies.artifact import content_hash, manifest_hash, with_manifest


@pytest.fixture
def proxy(tiny_data: tuple[Split, Split]) -> ProxySet:
    return get_builder("random", ipc=3, seed=0).build(tiny_data[0])


def _rewrite(path: Path, **arrays: np.ndarray) -> None:
    """Rewrite ``path`` as a valid npz with some arrays replaced (an edit the zip CRC cannot see)."""
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
    data.update(arrays)
    with open(path, "wb") as out:
        np.savez(out, **data)


def _manifest(path: Path) -> dict[str, Any]:
    with np.load(path) as f:
        out: dict[str, Any] = json.loads(str(f["manifest"]))
    return out


def test_round_trip_keeps_everything(proxy: ProxySet, tmp_path: Path) -> None:
    path = save_proxy(proxy, tmp_path / "p")  # suffix added
    assert path.name == "p.npz" and not (tmp_path / "p.npz.tmp").exists()
    back = load_proxy(path)
    assert torch.equal(back.images, proxy.images) and torch.equal(back.labels, proxy.labels)
    assert back.manifest == proxy.manifest
    assert back.id == proxy.id and back.id.startswith("random-ipc3-s0-")
    m = back.manifest
    assert (m.method, m.dataset, m.ipc, m.seed, m.images, m.num_classes) == ("random", "synthetic", 3, 0, 30, 10)
    assert m.bytes == 30 * 28 * 28 * 4 + 30 * 8
    assert m.content_hash == content_hash(back.images, back.labels)
    assert m.package_version and m.created and m.params == {"ipc": 3, "seed": 0}
    split = back.as_split()
    assert len(split) == 30 and split.num_classes == 10 and split.mean == m.mean


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NasProxyError, match="does not exist"):
        load_proxy(tmp_path / "nope.npz")


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.95])
def test_truncated_file_is_refused_naming_it(proxy: ProxySet, tmp_path: Path, keep: float) -> None:
    path = save_proxy(proxy, tmp_path / "p.npz")
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(NasProxyError, match="corrupted or truncated") as err:
        load_proxy(path)
    assert str(path) in str(err.value)


def test_flipped_bytes_are_refused(proxy: ProxySet, tmp_path: Path) -> None:
    path = save_proxy(proxy, tmp_path / "p.npz")
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 3  # inside the images array
    raw[mid : mid + 8] = bytes(b ^ 0xFF for b in raw[mid : mid + 8])
    path.write_bytes(bytes(raw))
    with pytest.raises(NasProxyError) as err:
        load_proxy(path)
    assert str(path) in str(err.value)


def test_damaged_array_header_is_refused(proxy: ProxySet, tmp_path: Path) -> None:
    # numpy parses the .npy header before the zip CRC is checked: its own errors must not escape.
    path = save_proxy(proxy, tmp_path / "p.npz")
    raw = path.read_bytes()
    at = raw.index(b"{'descr'")
    path.write_bytes(raw[:at] + b"{{{{{{{{" + raw[at + 8 :])
    with pytest.raises(NasProxyError, match="corrupted or truncated") as err:
        load_proxy(path)
    assert str(path) in str(err.value)


def test_edited_images_fail_the_content_hash(proxy: ProxySet, tmp_path: Path) -> None:
    path = save_proxy(proxy, tmp_path / "p.npz")
    images = proxy.images.numpy().copy()
    images[0, 0, 0, 0] += 1.0
    _rewrite(path, images=images)
    with pytest.raises(NasProxyError, match="content hash mismatch") as err:
        load_proxy(path)
    assert str(path) in str(err.value)


def test_swapped_labels_fail_the_content_hash(proxy: ProxySet, tmp_path: Path) -> None:
    path = save_proxy(proxy, tmp_path / "p.npz")
    labels = proxy.labels.numpy().copy()
    labels[[0, -1]] = labels[[-1, 0]]  # still balanced: only the hash can tell
    _rewrite(path, labels=labels)
    with pytest.raises(NasProxyError, match="content hash mismatch"):
        load_proxy(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("content_hash"), "manifest lacks content_hash"),
        (lambda m: m.update(ipc=4), r"holds 30 images; manifest says 30 \(4 per class x 10\)"),
        (lambda m: m.update(images=31), "manifest says 31"),
        (lambda m: m.update(mean=[0.0, 0.0, 0.0]), "1 channels but mean/std of length 3/1"),
        (lambda m: m.update(num_classes=5, ipc=6), "labels outside 0..4"),
        (lambda m: m.update(mean=5), "manifest field mean must be list of numbers, got 5"),
        (lambda m: m.update(ipc=None), "manifest field ipc must be int, got None"),
        (lambda m: m.update(seed=True), "manifest field seed must be int"),
        (lambda m: m.update(indices="x"), "manifest field indices must be null or list of ints"),
        (lambda m: m.update(indices=[1, 2]), "30 images but 2 training-set indices"),
        (lambda m: m.update(bytes=5), "manifest says 5 bytes"),
        (lambda m: m.update(format_version=99), "format version 99 is newer"),
        (lambda m: m.update(origin=["x"]), "manifest field origin must be null or object"),
    ],
)
def test_wrong_manifest_is_refused_naming_the_fault(
    proxy: ProxySet, tmp_path: Path, change: object, message: str
) -> None:
    path = save_proxy(proxy, tmp_path / "p.npz")
    manifest = _manifest(path)
    change(manifest)  # type: ignore[operator]
    # Sealed again after the edit, so the checks behind the manifest hash are the ones that speak.
    manifest["manifest_hash"] = manifest_hash(manifest)
    _rewrite(path, manifest=np.array(json.dumps(manifest)))
    with pytest.raises(NasProxyError, match=message) as err:
        load_proxy(path)
    assert str(path) in str(err.value)


def test_an_edited_manifest_fails_its_hash(proxy: ProxySet, tmp_path: Path) -> None:
    path = save_proxy(proxy, tmp_path / "p.npz")
    manifest = _manifest(path)
    manifest["dataset"] = "mnist"  # images, labels and their content hash untouched
    _rewrite(path, manifest=np.array(json.dumps(manifest)))
    with pytest.raises(NasProxyError, match="manifest hash mismatch: the manifest was edited after saving"):
        load_proxy(path)


def test_a_file_from_before_manifest_hashes_loads_with_a_note(proxy: ProxySet, tmp_path: Path) -> None:
    path = save_proxy(proxy, tmp_path / "p.npz")
    manifest = _manifest(path)
    del manifest["manifest_hash"], manifest["dataset_origin"]  # as nas-proxy 0.1.0 wrote it
    _rewrite(path, manifest=np.array(json.dumps(manifest)))
    with pytest.warns(Note, match="manifest is not protected by a hash"):
        old = load_proxy(path)
    assert old.id == proxy.id and torch.equal(old.images, proxy.images)
    save_proxy(old, path)  # re-saved: sealed, and no note any more
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_proxy(path).manifest == proxy.manifest


def test_manifest_not_json_and_not_a_proxy_file(proxy: ProxySet, tmp_path: Path) -> None:
    path = save_proxy(proxy, tmp_path / "p.npz")
    _rewrite(path, manifest=np.array("{not json"))
    with pytest.raises(NasProxyError, match="manifest is not valid JSON"):
        load_proxy(path)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(NasProxyError, match="not a proxy file"):
        load_proxy(other)


def test_wrong_dtypes_and_unbalanced_sets_are_refused(proxy: ProxySet, tmp_path: Path) -> None:
    path = save_proxy(proxy, tmp_path / "p.npz")
    _rewrite(path, images=proxy.images.numpy().astype(np.float64))
    with pytest.raises(NasProxyError, match="expected float32 images"):
        load_proxy(path)
    labels = proxy.labels.clone()
    labels[0] = 1
    bad = ProxySet(proxy.images, labels, replace(proxy.manifest, content_hash=content_hash(proxy.images, labels)))
    save_proxy(bad, path)
    with pytest.raises(NasProxyError, match="not class-balanced"):
        load_proxy(path)


def test_nan_images_are_refused(proxy: ProxySet, tmp_path: Path) -> None:
    images = proxy.images.clone()
    images[0, 0, 0, 0] = float("nan")
    bad = ProxySet(images, proxy.labels, replace(proxy.manifest, content_hash=content_hash(images, proxy.labels)))
    path = save_proxy(bad, tmp_path / "p.npz")
    with pytest.raises(NasProxyError, match="NaN or infinity"):
        load_proxy(path)


def test_with_manifest_replaces_fields(proxy: ProxySet) -> None:
    assert with_manifest(proxy, build_seconds=12.5).manifest.build_seconds == 12.5


def test_a_file_written_before_origins_existed_loads_with_none(proxy: ProxySet, tmp_path: Path) -> None:
    path = save_proxy(proxy, tmp_path / "p.npz")
    manifest = _manifest(path)
    assert manifest.pop("origin") is None  # a built proxy has no origin
    manifest.pop("manifest_hash")  # files from before origins had no manifest hash either
    _rewrite(path, manifest=np.array(json.dumps(manifest)))
    assert load_proxy(path).manifest.origin is None
