"""`nas-proxy import`: files written here with the structure the outside tools write, read safely.

- dc-official: ``torch.save({"data": [[images, labels], ...], "accs_all_exps": {model: [acc, ...]}})``
  as the dataset-condensation authors' scripts do, accuracies as numpy floats (their ``epoch()``
  returns ``np.float64``), named ``res_<method>_<dataset>_<model>_<ipc>ipc.pt``;
- tensors: ``torch.save(image_syn.cpu(), "images_best.pt")`` and ``torch.save(label_syn.cpu(),
  "labels_best.pt")`` as MTT does (DATM: soft labels of shape N x classes);
- npz: numpy arrays, uint8 channels-last or float.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nas_proxy.cli import main
from nas_proxy.data import DATASETS, load_dataset
from nas_proxy.errors import NasProxyError, UnknownNameError
from nas_proxy.proxies import load_proxy, save_proxy
from nas_proxy.proxies.importers import import_proxy

SMALL = "ConvNet-D1-W8-AR-IN-AP"
FMNIST = DATASETS["fashionmnist"]


def class_labels(classes: int, ipc: int) -> torch.Tensor:
    """The authors' label_syn: ``[np.ones(ipc) * i for i in range(classes)]`` as int64, flattened."""
    return torch.tensor(np.array([np.ones(ipc) * i for i in range(classes)]), dtype=torch.long).view(-1)


def normalized_images(n: int, shape: tuple[int, ...] = (1, 28, 28), seed: int = 0) -> torch.Tensor:
    """Learned images in the normalized space: unclipped, some beyond the real range."""
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed)) * 1.2


def write_dc_official(
    folder: Path,
    experiments: list[tuple[torch.Tensor, torch.Tensor]],
    name: str = "res_DC_FashionMNIST_ConvNet_2ipc.pt",
    evals: int = 2,
) -> Path:
    """What the authors' main.py saves after each experiment: every pair so far and every accuracy so far."""
    data_save = [[images.detach().cpu(), labels.detach().cpu()] for images, labels in experiments]
    accs_all_exps = {"ConvNet": [np.float64(0.5 + 0.01 * i) for i in range(evals * len(experiments))]}
    path = folder / name
    torch.save({"data": data_save, "accs_all_exps": accs_all_exps}, path)
    return path


def write_mtt(folder: Path, images: torch.Tensor, labels: torch.Tensor) -> Path:
    """MTT's distill.py: images_best.pt, labels_best.pt (and the learned lr beside them)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(images.cpu(), folder / "images_best.pt")
    torch.save(labels.cpu(), folder / "labels_best.pt")
    torch.save(torch.tensor(0.01), folder / "lr_best.pt")
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- dc-official


def test_dc_official_experiment_k_is_imported_as_it_was_saved(tmp_path: Path) -> None:
    exps = [(normalized_images(20, seed=k), class_labels(10, 2)) for k in range(3)]
    path = write_dc_official(tmp_path, exps)
    result = import_proxy(path, format="dc-official", dataset="fashionmnist", index=2)
    proxy = result.proxy
    assert torch.equal(proxy.images, exps[2][0]) and torch.equal(proxy.labels, exps[2][1])  # normalized: as is
    m = proxy.manifest
    assert (m.method, m.dataset, m.ipc, m.seed, m.num_classes, m.params) == ("dc", "fashionmnist", 2, 2, 10, {})
    assert (m.mean, m.std) == (FMNIST.mean, FMNIST.std) and m.build_seconds == 0.0
    origin = m.origin
    assert origin is not None
    assert (origin["format"], origin["source"], origin["sha256"], origin["index"], origin["method"]) == (
        "dc-official", path.name, sha256(path), 2, "dc"
    )
    assert origin["experiments"] == 3 and origin["model"] == "ConvNet" and origin["file_ipc"] == 2
    assert origin["reported_accuracy"] == {"ConvNet": [0.54, 0.55]}  # experiment 2's two evaluations
    assert any("taken as normalized" in n and "0.2861" in n for n in result.notes)
    # An ordinary proxy file: saved, loaded and validated like a built one, origin included.
    back = load_proxy(save_proxy(proxy, tmp_path / "p.npz"))
    assert back.manifest == m and back.id == proxy.id and back.id.startswith("dc-ipc2-s2-")


def test_dc_official_defaults_to_experiment_0_and_says_so(tmp_path: Path) -> None:
    exps = [(normalized_images(20, seed=k), class_labels(10, 2)) for k in range(2)]
    path = write_dc_official(tmp_path, exps)
    result = import_proxy(path, format="dc-official", dataset="fashionmnist", method="my-dc")
    assert torch.equal(result.proxy.images, exps[0][0])
    assert result.proxy.manifest.method == "my-dc" and result.proxy.manifest.origin["index"] == 0  # type: ignore[index]
    assert "experiment 0 of the 2 in the file (--index K picks another)" in result.notes


def test_dc_official_written_under_numpy_1_module_names_loads(tmp_path: Path) -> None:
    # numpy 1.x pickles its scalars as numpy.core.multiarray.scalar (numpy 2: numpy._core...).
    path = write_dc_official(tmp_path, [(normalized_images(20), class_labels(10, 2))])
    src, buf = zipfile.ZipFile(path), io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\nscalar" in data
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
            out.writestr(info.filename, data)
    path.write_bytes(buf.getvalue())
    proxy = import_proxy(path, format="dc-official", dataset="fashionmnist").proxy
    assert proxy.manifest.origin["reported_accuracy"] == {"ConvNet": [0.5, 0.51]}  # type: ignore[index]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"index": 3}, r"no experiment 3: the file holds 1 \(--index 0..0\)"),
        ({"dataset": "mnist"}, "res_DC_FashionMNIST_ConvNet_2ipc.pt is a FashionMNIST result"),
        ({"dataset": "cifar10"}, "is a FashionMNIST result"),
        ({"method": "two words"}, "method name 'two words' must be letters"),
        ({"labels": "x.pt"}, "--labels applies to tensors files, not dc-official"),
        ({"format": "pickle"}, "unknown import format 'pickle'; valid: dc-official, tensors, npz"),
        ({"pixels": "hdr"}, "unknown pixel scale 'hdr'; valid: auto, normalized, unit, byte"),
    ],
)
def test_dc_official_bad_requests_are_refused(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    path = write_dc_official(tmp_path, [(normalized_images(20), class_labels(10, 2))])
    with pytest.raises(NasProxyError, match=message):
        import_proxy(path, **{"format": "dc-official", "dataset": "fashionmnist", **change})


def test_shapes_classes_balance_and_values_are_checked_against_the_dataset(tmp_path: Path) -> None:
    def attempt(images: torch.Tensor, labels: torch.Tensor, dataset: str = "fashionmnist") -> None:
        path = write_dc_official(tmp_path, [(images, labels)], name="res.pt")
        import_proxy(path, format="dc-official", dataset=dataset)

    with pytest.raises(NasProxyError, match=r"shape \(20, 3, 32, 32\) do not fit fashionmnist \(1x28x28\)"):
        attempt(normalized_images(20, (3, 32, 32)), class_labels(10, 2))
    with pytest.raises(NasProxyError, match=r"not class-balanced, images per class \[3, 1, 2, 2"):
        attempt(normalized_images(20), torch.tensor([0, 0, 0, 1, *class_labels(10, 2)[4:].tolist()]))
    with pytest.raises(NasProxyError, match=r"labels 0\.\.11 fall outside the dataset's classes 0\.\.9"):
        attempt(normalized_images(24), class_labels(12, 2))
    with pytest.raises(NasProxyError, match="20 images but 10 labels"):
        attempt(normalized_images(20), class_labels(10, 1))
    bad = normalized_images(20)
    bad[3, 0, 1, 1] = float("nan")
    with pytest.raises(NasProxyError, match="NaN or infinity"):
        attempt(bad, class_labels(10, 2))
    # A normalized-space format holding [0, 1] pixels: refused, with both ways out named.
    pixels = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with pytest.raises(NasProxyError, match=r"as \[0, 1\] pixels do.*--pixels unit normalizes them"):
        attempt(pixels, class_labels(10, 2))
    # 100 classes of CIFAR-100 need as many balanced labels; 3 channels fit.
    attempt(normalized_images(100, (3, 32, 32)), class_labels(100, 1), dataset="cifar100")


def test_pixels_unit_converts_with_the_dataset_statistics(tmp_path: Path) -> None:
    pixels = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    path = write_dc_official(tmp_path, [(pixels, class_labels(10, 2))])
    result = import_proxy(path, format="dc-official", dataset="fashionmnist", pixels="unit")
    assert torch.allclose(result.proxy.images, (pixels - 0.2861) / 0.3530)
    assert result.proxy.manifest.origin["pixels"] == "unit"  # type: ignore[index]
    assert any(n.startswith("pixels (unit: --pixels) converted to the normalized space") for n in result.notes)
    with pytest.raises(NasProxyError, match=r"--pixels byte expects 0\.\.255, but values span -"):
        import_proxy(write_dc_official(tmp_path, [(normalized_images(20), class_labels(10, 2))], name="n.pt"),
                     format="dc-official", dataset="fashionmnist", pixels="byte")


# ----------------------------------------------------------------------------- tensors (MTT, DATM)


def test_mtt_folder_or_image_file_imports_with_both_files_hashed(tmp_path: Path) -> None:
    images, labels = normalized_images(30, (3, 32, 32)), class_labels(10, 3)
    folder = write_mtt(tmp_path / "logged_files" / "CIFAR10" / "run", images, labels)
    by_folder = import_proxy(folder, format="tensors", dataset="cifar10", method="mtt").proxy
    by_file = import_proxy(folder / "images_best.pt", format="tensors", dataset="cifar10", method="mtt").proxy
    assert torch.equal(by_folder.images, images) and torch.equal(by_file.labels, labels)
    assert by_folder.manifest.content_hash == by_file.manifest.content_hash
    origin = by_folder.manifest.origin
    assert origin is not None and origin["index"] is None and origin["method"] == "mtt"
    assert (origin["source"], origin["sha256"]) == ("images_best.pt", sha256(folder / "images_best.pt"))
    assert (origin["labels_source"], origin["labels_sha256"]) == ("labels_best.pt", sha256(folder / "labels_best.pt"))
    assert by_folder.manifest.dataset == "cifar10" and by_folder.manifest.mean == DATASETS["cifar10"].mean


def test_tensors_rows_are_put_in_class_order_and_labels_given_explicitly(tmp_path: Path) -> None:
    images, labels = normalized_images(20), class_labels(10, 2)
    order = torch.randperm(20, generator=torch.Generator().manual_seed(3))
    torch.save(images[order], tmp_path / "syn.pt")
    torch.save(labels[order].to(torch.int32), tmp_path / "targets.pt")
    result = import_proxy(tmp_path / "syn.pt", format="tensors", dataset="fashionmnist",
                          labels=tmp_path / "targets.pt")
    assert result.proxy.labels.tolist() == labels.tolist()
    for c in range(10):  # each class keeps its own images, in the file's order
        assert torch.equal(result.proxy.images[2 * c : 2 * c + 2], images[order][labels[order] == c])
    assert any(n.startswith("rows reordered by class") for n in result.notes)
    with pytest.raises(NasProxyError, match="no label file to pair it with: give --labels FILE"):
        import_proxy(tmp_path / "syn.pt", format="tensors", dataset="fashionmnist")


def test_datm_soft_labels_are_refused_unless_argmax_is_asked(tmp_path: Path) -> None:
    hard = class_labels(10, 2)
    soft = torch.nn.functional.one_hot(hard, 10).float() * 3 + torch.rand(20, 10)
    folder = write_mtt(tmp_path, normalized_images(20), soft)
    with pytest.raises(NasProxyError, match=r"soft labels \(N x 10 scores, as DATM learns them\)"):
        import_proxy(folder, format="tensors", dataset="fashionmnist")
    result = import_proxy(folder, format="tensors", dataset="fashionmnist", soft_labels="argmax")
    assert torch.equal(result.proxy.labels, hard)
    assert "soft labels reduced to each row's argmax (--soft-labels argmax)" in result.notes


def test_one_pt_file_with_a_dict_or_a_pair(tmp_path: Path) -> None:
    images, labels = normalized_images(20), class_labels(10, 2)
    torch.save({"image_syn": images, "label_syn": labels, "lr": torch.tensor(0.1)}, tmp_path / "d.pt")
    torch.save([images, labels], tmp_path / "pair.pt")
    for name in ("d.pt", "pair.pt"):
        assert torch.equal(import_proxy(tmp_path / name, format="tensors", dataset="fashionmnist").proxy.images, images)
    torch.save({"a": images, "b": labels}, tmp_path / "odd.pt")
    with pytest.raises(NasProxyError, match="the dict holds 'a', 'b': none of the known pairs"):
        import_proxy(tmp_path / "odd.pt", format="tensors", dataset="fashionmnist")
    assert import_proxy(tmp_path / "odd.pt", format="tensors", dataset="fashionmnist", keys=("a", "b")).proxy


# ----------------------------------------------------------------------------- npz


def test_npz_uint8_channels_last_is_transposed_and_normalized(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "set.npz", x=x, y=np.arange(10))
    result = import_proxy(tmp_path / "set.npz", format="npz", dataset="cifar10")
    info = DATASETS["cifar10"]
    expected = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - torch.tensor(info.mean).view(1, 3, 1, 1)) / (
        torch.tensor(info.std).view(1, 3, 1, 1)
    )
    assert torch.allclose(result.proxy.images, expected, atol=1e-6)
    assert result.proxy.manifest.origin["pixels"] == "byte"  # type: ignore[index]
    assert "images were channels-last (N, H, W, C): transposed to (N, C, H, W)" in result.notes
    assert any("pixels (byte: uint8 pixels) converted" in n for n in result.notes)
    assert result.proxy.manifest.method == "imported" and result.proxy.manifest.origin["keys"] == ["x", "y"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("make", "scale"),
    [
        (lambda g: torch.rand(20, 28, 28, generator=g), "unit"),  # (N, H, W) pixels in [0, 1]
        (lambda g: (torch.rand(20, 1, 28, 28, generator=g) * 255).round(), "byte"),  # whole floats 0..255
        (lambda g: torch.randn(20, 1, 28, 28, generator=g), "normalized"),
    ],
)
def test_npz_pixel_scale_is_read_from_the_values(tmp_path: Path, make: Any, scale: str) -> None:
    x = make(torch.Generator().manual_seed(0))
    np.savez(tmp_path / "s.npz", images=x.numpy(), labels=class_labels(10, 2).numpy())
    proxy = import_proxy(tmp_path / "s.npz", format="npz", dataset="fashionmnist").proxy
    assert proxy.manifest.origin["pixels"] == scale  # type: ignore[index]
    pixels = {"unit": x, "byte": x / 255, "normalized": None}[scale]
    want = x.reshape(20, 1, 28, 28) if pixels is None else (pixels.reshape(20, 1, 28, 28) - 0.2861) / 0.3530
    assert torch.allclose(proxy.images, want, atol=1e-6)


def test_a_users_own_dataset_file_sets_shape_classes_and_statistics(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = tmp_path / "mine.npz"  # the user's dataset: 3 classes of 8x8 RGB, NHWC uint8
    np.savez(data, x_train=rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8), y_train=np.arange(30) % 3,
             x_test=rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8), y_test=np.arange(6) % 3)
    train, _ = load_dataset(str(data), device="cpu")
    pixels = rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "set.npz", images=pixels, labels=np.array([0, 0, 1, 1, 2, 2]))
    proxy = import_proxy(tmp_path / "set.npz", format="npz", dataset=str(data)).proxy
    mean, std = torch.tensor(train.mean).view(1, 3, 1, 1), torch.tensor(train.std).view(1, 3, 1, 1)
    assert torch.allclose(proxy.images, (torch.from_numpy(pixels).float() / 255 - mean) / std, atol=1e-6)
    # Own data is identified by content (its id), and the manifest remembers where the file was.
    assert (proxy.manifest.dataset, proxy.manifest.num_classes, proxy.manifest.ipc) == (train.dataset, 3, 2)
    assert train.dataset.startswith("data-") and proxy.manifest.dataset_origin == str(data.resolve())
    with pytest.raises(NasProxyError, match=r"do not fit .*mine\.npz \(3x8x8\)"):
        np.savez(tmp_path / "grey.npz", images=pixels[:, 0], labels=np.array([0, 0, 1, 1, 2, 2]))
        import_proxy(tmp_path / "grey.npz", format="npz", dataset=str(data))


def test_npz_without_known_arrays_names_what_it_holds(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", syn=np.zeros((20, 1, 28, 28), np.float32), cls=class_labels(10, 2).numpy())
    with pytest.raises(NasProxyError, match=r"the archive holds 'syn', 'cls': none of the known pairs .*--keys"):
        import_proxy(tmp_path / "s.npz", format="npz", dataset="fashionmnist")
    with pytest.raises(NasProxyError, match="no 'syn' and 'labels'"):
        import_proxy(tmp_path / "s.npz", format="npz", dataset="fashionmnist", keys=("syn", "labels"))
    assert import_proxy(tmp_path / "s.npz", format="npz", dataset="fashionmnist", keys=("syn", "cls")).proxy


# ----------------------------------------------------------------------------- no code runs


class Payload:
    """Unpickled, it writes ``marker``: the shape of a real attack, harmless here."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


@pytest.fixture
def payload(tmp_path: Path) -> Payload:
    marker = tmp_path / "ran.txt"
    live = Payload(marker)
    pickle.loads(pickle.dumps(live))  # the payload is live: an ordinary unpickler runs it
    assert marker.read_text() == "ran"
    marker.unlink()
    return live


def _malicious(kind: str, folder: Path, payload: Payload) -> tuple[Path, str]:
    images, labels = normalized_images(20), class_labels(10, 2)
    if kind == "dc-official":
        path = folder / "res_DC_FashionMNIST_ConvNet_2ipc.pt"
        torch.save({"data": [[images, labels]], "accs_all_exps": {"ConvNet": [payload]}}, path)
        return path, "dc-official"
    if kind == "tensors":
        write_mtt(folder, images, labels)
        torch.save(payload, folder / "labels_best.pt")  # the label file carries it
        return folder, "tensors"
    path = folder / "set.npz"
    if kind == "npz":
        np.savez(path, images=np.array([payload], dtype=object), labels=labels.numpy())  # an object array
    else:  # a bare pickle under an .npz name
        path.write_bytes(pickle.dumps(payload))
    return path, "npz"


@pytest.mark.parametrize("kind", ["dc-official", "tensors", "npz", "npz-bare-pickle"])
def test_a_malicious_pickle_is_refused_and_never_runs(
    tmp_path: Path, payload: Payload, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source, fmt = _malicious(kind, tmp_path, payload)
    out = tmp_path / "p.npz"
    code = main(["import", str(source), "--format", fmt, "--dataset", "fashionmnist", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "refused" in err and ("builtins.exec" in err or "pickled objects" in err), err
    assert not payload.marker.exists() and not out.exists()


# ----------------------------------------------------------------------------- everywhere a proxy works


@pytest.fixture
def imported(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A dc-official file distilled from the synthetic dataset (its real images), imported by the CLI."""
    monkeypatch.chdir(tmp_path)  # search writes its journal under results/studies
    train, _ = load_dataset("synthetic")
    rows = torch.cat([train.indices_of_class(c)[:2] for c in range(10)])
    name = "res_DM_synthetic_ConvNet_2ipc.pt"
    source = write_dc_official(tmp_path, [(train.images[rows], train.labels[rows])], name=name)
    out = tmp_path / "dm-synthetic"
    code = main(["import", str(source), "--format", "dc-official", "--dataset", "synthetic", "--out", str(out),
                 "--build-seconds", "90"])
    text, err = capsys.readouterr()
    assert code == 0, err
    assert f"path:     {out}.npz" in text and "method:   dm (imported: dc-official, experiment 0 of 1)" in text
    assert f"source:   {source.name} (sha256 {sha256(source)})" in text
    assert "images:   20 (2 per class x 10 classes of synthetic)" in text and "note:     values " in text
    return out.with_suffix(".npz")


def test_an_imported_set_works_with_show_eval_proxy_evaluate_report_and_search(
    imported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", str(imported)]) == 0
    text = capsys.readouterr().out
    assert "origin:" in text and "  format:         dc-official" in text and "build_seconds:    90.0" in text

    assert main(["eval-proxy", str(imported), "--arch", SMALL, "--models", "1", "--epochs", "2", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("accuracy: ")

    run = tmp_path / "run"
    argv = ["evaluate", "--space", "tiny", "--filter", "ConvNet-D1-W4-*", "--dataset", "synthetic", "--epochs", "1",
            "--proxy", str(imported), "--full", "--out", str(run), "--no-progress"]
    assert main(argv) == 0
    assert "8 planned, 0 already stored, 8 trained now (8 ok" in capsys.readouterr().out
    assert main(["report", str(run), "--bootstrap", "20", "--no-figures"]) == 0
    report = capsys.readouterr().out
    assert "dm ipc2" in report and "whole data" in report and "| Build time (min) | 1.50 |" in report

    assert main(["search", "--space", "tiny", "--proxy", str(imported), "--n-trials", "2", "--epochs", "1",
                 "--no-progress"]) == 0
    assert "trials:   2 complete" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "hdf5"], "unknown import format 'hdf5'; valid: dc-official, tensors, npz"),
        (["--format", "npz", "--index", "1"], "--index applies to dc-official files, not npz"),
        (["--format", "npz", "--keys", "x"], "--keys expects IMAGES,LABELS"),
        (["--format", "npz", "--soft-labels", "mean"], "unknown soft-label handling 'mean'; valid: refuse, argmax"),
        (["--format", "npz", "--build-seconds", "-1"], "--build-seconds must be a non-negative number"),
        (["--format", "npz", "--dataset", "nowhere"], "unknown dataset 'nowhere'"),
    ],
)
def test_import_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    np.savez(tmp_path / "s.npz", x=np.zeros((20, 1, 28, 28), np.float32), y=class_labels(10, 2).numpy())
    args = ["import", str(tmp_path / "s.npz"), "--dataset", "fashionmnist", "--out", str(tmp_path / "o.npz"), *argv]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o.npz").exists()


def test_missing_source_and_unknown_names_raise_value_errors(tmp_path: Path) -> None:
    with pytest.raises(NasProxyError, match=r"source '.*nothing\.pt' does not exist"):
        import_proxy(tmp_path / "nothing.pt", format="tensors", dataset="fashionmnist")
    with pytest.raises(UnknownNameError):
        import_proxy(tmp_path, format="zip", dataset="fashionmnist")
