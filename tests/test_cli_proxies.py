from __future__ import annotations

import re
from pathlib import Path

import pytest

from nas_proxy.cli import main
from nas_proxy.proxies import coreset, default_proxy_path, load_proxy

SMALL = "ConvNet-D1-W8-AR-IN-AP"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _build(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> tuple[int, str, str]:
    return _run(capsys, "build", "--dataset", "synthetic", "--ipc", "2", "--out", str(out), "--no-progress", *extra)


def test_build_prints_path_seconds_images_bytes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "p.npz"
    code, text, err = _build(capsys, out, "--method", "random", "--seed", "3")
    assert code == 0, err
    assert f"path:     {out}" in text
    assert re.search(r"^seconds:  \d+\.\d$", text, re.M)
    assert "images:   20 (2 per class x 10 classes of synthetic)" in text
    assert f"bytes:    {20 * 28 * 28 * 4 + 20 * 8:,}" in text
    proxy = load_proxy(out)
    assert proxy.manifest.seed == 3 and proxy.manifest.method == "random"
    assert not out.with_suffix(".ckpt").exists()


def test_build_set_passes_typed_hyperparameters(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "h"
    code, _, err = _build(capsys, out, "--method", "herding", "--set", f"embed_arch={SMALL}", "--set", "embed_epochs=1")
    assert code == 0, err
    proxy = load_proxy(tmp_path / "h.npz")  # .npz added
    assert proxy.manifest.params["embed_epochs"] == 1 and proxy.manifest.params["embed_arch"] == SMALL


def test_default_output_path() -> None:
    assert default_proxy_path("fashionmnist", "dc", 10, 0) == "results/proxies/fashionmnist-dc-ipc10-s0.npz"
    assert default_proxy_path("/data/mine.npz", "random", 1, 2) == "results/proxies/mine-random-ipc1-s2.npz"


def test_interrupted_build_keeps_a_checkpoint_and_resumes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ("--method", "forgetting", "--set", f"arch={SMALL}", "--set", "epochs=3")
    code, _, err = _build(capsys, tmp_path / "ref.npz", *args)
    assert code == 0, err
    reference = load_proxy(tmp_path / "ref.npz")
    monkeypatch.setenv("NAS_PROXY_CACHE", str(tmp_path / "fresh-cache"))  # the counts must be trained again

    real = coreset.record_presentation
    calls = [0]

    def ctrl_c_in_epoch_two(*a: object) -> None:
        calls[0] += 1
        if calls[0] == 5:  # 600 images, batch 256: 3 steps an epoch
            raise KeyboardInterrupt
        real(*a)  # type: ignore[arg-type]

    monkeypatch.setattr(coreset, "record_presentation", ctrl_c_in_epoch_two)
    out = tmp_path / "f.npz"
    code, _, err = _build(capsys, out, *args)
    assert code == 130 and "rerun the same command to resume" in err
    assert out.with_suffix(".ckpt").exists() and not out.exists()

    monkeypatch.setattr(coreset, "record_presentation", real)
    code, _, err = _build(capsys, out, *args)
    assert code == 0 and "resuming from" in err
    assert not out.with_suffix(".ckpt").exists()
    assert load_proxy(out).manifest.content_hash == reference.manifest.content_hash


def test_checkpoint_of_another_build_is_not_overwritten(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "f.npz"
    ckpt = out.with_suffix(".ckpt")
    import torch

    torch.save({"key": "something else"}, ckpt)
    code, _, err = _build(capsys, out, "--method", "forgetting", "--set", f"arch={SMALL}", "--set", "epochs=1")
    assert code == 2 and "checkpoint of another build" in err and str(ckpt) in err
    assert ckpt.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--method", "nope"), "unknown proxy method 'nope'; valid: random, herding"),
        (("--method", "random", "--ipc", "0"), "ipc (images per class) must be a positive integer, got 0"),
        (("--method", "random", "--set", "embed_epochs=2"), "method 'random' has no parameter 'embed_epochs'"),
        (("--method", "herding", "--set", "embed_epochs=two"), "embed_epochs expects int, got 'two'"),
        (("--method", "herding", "--set", "embed_epochs"), "--set expects key=value"),
        (("--method", "random", "--set", "ipc=3"), "set ipc with --ipc"),
        (("--method", "kcenter", "--set", "first_center=far"), "first_center must be one of mean, random"),
        (("--method", "random", "--dataset", "nowhere"), "unknown dataset 'nowhere'"),
    ],
)
def test_build_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: tuple[str, ...], message: str
) -> None:
    code, _, err = _run(capsys, "build", "--out", str(tmp_path / "x.npz"), "--ipc", "1", *argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "x.npz").exists()


@pytest.fixture
def proxy_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Path:
    out = tmp_path / "p.npz"
    code, _, err = _build(capsys, out, "--method", "random")
    assert code == 0, err
    return out


def test_eval_proxy_prints_each_model_and_the_summary_line(
    capsys: pytest.CaptureFixture[str], proxy_file: Path
) -> None:
    code, out, err = _run(
        capsys, "eval-proxy", str(proxy_file), "--arch", SMALL, "--models", "2", "--epochs", "3", "--no-progress"
    )
    assert code == 0, err
    per_model = re.findall(r"^model (\d) \(seed (\d)\): (\d+\.\d\d) %", out, re.M)
    assert [(m, s) for m, s, _ in per_model] == [("1", "0"), ("2", "1")]
    last = out.strip().splitlines()[-1]
    match = re.fullmatch(r"accuracy: (\d+\.\d\d) \+- (\d+\.\d\d)", last)
    assert match, last
    accs = [float(a) for _, _, a in per_model]
    assert abs(float(match.group(1)) - sum(accs) / 2) < 0.01


def test_eval_proxy_is_reproducible_from_python(capsys: pytest.CaptureFixture[str], proxy_file: Path) -> None:
    from nas_proxy.data import load_dataset
    from nas_proxy.proxies.scoring import evaluate_proxy, summarize
    from nas_proxy.train import TrainConfig

    _, test = load_dataset("synthetic")
    accs = evaluate_proxy(load_proxy(proxy_file), test, SMALL, models=2, config=TrainConfig(epochs=3), seed=0)
    mean, std = summarize(accs)
    _, out, _ = _run(capsys, "eval-proxy", str(proxy_file), "--arch", SMALL, "--models", "2", "--epochs", "3")
    assert out.strip().splitlines()[-1] == f"accuracy: {mean:.2f} +- {std:.2f}"


def test_show_prints_manifest_and_writes_grid(
    capsys: pytest.CaptureFixture[str], proxy_file: Path, tmp_path: Path
) -> None:
    grid = tmp_path / "grid.png"
    code, out, err = _run(capsys, "show", str(proxy_file), "--out", str(grid), "--per-class", "1")
    assert code == 0, err
    for key in ("method:", "dataset:", "ipc:", "content_hash:", "build_seconds:", "package_version:", "bytes:"):
        assert key in out
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = _run(capsys, "show", str(proxy_file))
    assert code == 0 and "random" in out


@pytest.mark.parametrize("command", ["show", "eval-proxy"])
def test_bad_proxy_files_exit_2_naming_the_file(
    capsys: pytest.CaptureFixture[str], proxy_file: Path, tmp_path: Path, command: str
) -> None:
    missing = tmp_path / "missing.npz"
    code, _, err = _run(capsys, command, str(missing))
    assert code == 2 and "does not exist" in err and str(missing) in err
    raw = proxy_file.read_bytes()
    proxy_file.write_bytes(raw[: len(raw) // 2])
    code, _, err = _run(capsys, command, str(proxy_file))
    assert code == 2 and err.count("\n") == 1 and str(proxy_file) in err and "truncated" in err


def test_eval_proxy_bad_options_exit_2(capsys: pytest.CaptureFixture[str], proxy_file: Path) -> None:
    code, _, err = _run(capsys, "eval-proxy", str(proxy_file), "--models", "0")
    assert code == 2 and "--models must be at least 1" in err
    code, _, err = _run(capsys, "eval-proxy", str(proxy_file), "--arch", "VGG11")
    assert code == 2 and "malformed architecture id" in err
    code, _, err = _run(capsys, "eval-proxy", str(proxy_file), "--epochs", "0")
    assert code == 2 and "epochs must be at least 1" in err
