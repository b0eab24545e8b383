"""Errors at the command line: one line and exit 2 for bad input or environment, --debug for tracebacks;
own data matched to its proxies by content."""

from __future__ import annotations

import argparse
import errno
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nas_proxy import cli
from nas_proxy.cli import main
from nas_proxy.proxies import load_proxy

RNG = np.random.default_rng(0)
SMALL = "ConvNet-D1-W4-AR-IN-AP"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def own_npz(path: Path, classes: int = 3, per_class: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = classes * per_class
    np.savez(
        path,
        x_train=rng.integers(0, 256, (n, 8, 8), dtype=np.uint8),
        y_train=np.arange(n) % classes,
        x_test=rng.integers(0, 256, (classes * 2, 8, 8), dtype=np.uint8),
        y_test=np.arange(classes * 2) % classes,
    )
    return path


def failing(exc: BaseException) -> Any:
    def command(args: argparse.Namespace) -> int:
        raise exc

    return command


def with_command(monkeypatch: pytest.MonkeyPatch, command: Any) -> None:
    # Swap the `space list` handler for one that fails as wanted.
    original = cli.build_parser

    def parser() -> argparse.ArgumentParser:
        p = original()
        p.set_defaults(func=command)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                action.choices["space"].set_defaults(func=command)
                for sub in action.choices["space"]._actions:
                    if isinstance(sub, argparse._SubParsersAction):
                        sub.choices["list"].set_defaults(func=command)
        return p

    monkeypatch.setattr(cli, "build_parser", parser)


def test_bad_input_is_one_line_and_debug_adds_the_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NAS_PROXY_DEBUG", raising=False)
    code, _, err = run(capsys, "space", "show", "ConvNet-D9")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    for argv in (["--debug", "space", "show", "ConvNet-D9"], ["space", "show", "ConvNet-D9", "--debug"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "Traceback (most recent call last)" in err and err.splitlines()[-1].startswith("error: ")
    monkeypatch.setenv("NAS_PROXY_DEBUG", "1")
    code, _, err = run(capsys, "space", "show", "ConvNet-D9")
    assert code == 2 and "Traceback" in err


def test_a_bug_says_so_in_one_line_exit_1_and_debug_shows_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NAS_PROXY_DEBUG", raising=False)
    with_command(monkeypatch, failing(TypeError("unsupported operand\nspanning lines")))
    code, _, err = run(capsys, "space", "list")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: internal error (TypeError: unsupported operand spanning lines): a bug")
    assert "rerun with --debug (or NAS_PROXY_DEBUG=1)" in err
    code, _, err = run(capsys, "space", "list", "--debug")
    assert code == 1 and 'raise exc' in err and "TypeError: unsupported operand" in err


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "results/x/runs.jsonl"),
         "error: No space left on device: results/x/runs.jsonl (free some disk space)"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/x"),
         "error: Permission denied: /root/x (check its permissions)"),
        (MemoryError(), "error: out of memory () ; try fewer --n-jobs"),
    ],
)
def test_environment_errors_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, exc: BaseException, line: str
) -> None:
    with_command(monkeypatch, failing(exc))
    code, _, err = run(capsys, "space", "list")
    assert code == 2 and err.count("\n") == 1
    assert err.replace("() ;", "();").startswith(line.replace("() ;", "();"))


def test_an_empty_dataset_and_a_failed_download_are_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty.npz"
    np.savez(empty, x_train=np.zeros((0, 8, 8)), y_train=np.zeros(0, int), x_test=np.zeros((0, 8, 8)),
             y_test=np.zeros(0, int))
    code, _, err = run(capsys, "train", "--dataset", str(empty), "--epochs", "1")
    assert code == 2
    assert err == f"error: {empty}: x_train is empty (0 images); a dataset needs training and test images\n"

    import torchvision.datasets as tvd

    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://a/, got:\n<urlopen error>\n")

    monkeypatch.setattr(tvd, "MNIST", offline)
    code, _, err = run(capsys, "train", "--dataset", "mnist", "--data-root", str(tmp_path / "none"), "--epochs", "1")
    assert code == 2 and err.count("\n") == 1
    assert "download failed (RuntimeError: Error downloading train-images-idx3-ubyte.gz: Tried https://a/" in err


def test_warnings_print_as_one_plain_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "protocol.json").write_text("{}")
    (run_dir / "runs.jsonl").write_text('{"arch_id": "ConvNet-D1-W4-AR-NN-NP"')  # torn, no newline
    code, out, err = run(capsys, "runs", str(run_dir))
    assert code == 0 and out.startswith("arch_id,")
    assert err == f"warning: {run_dir / 'runs.jsonl'}:1: skipping torn last line (a write cut short)\n"


# ----------------------------------------------------------------------------- own data by content


def test_own_data_is_matched_by_content_through_any_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data = own_npz(tmp_path / "data" / "mine.npz")
    code, _, err = run(capsys, "build", "--method", "random", "--dataset", "data/mine.npz", "--ipc", "2",
                       "--out", "p.npz", "--no-progress")
    assert code == 0, err
    manifest = load_proxy("p.npz").manifest
    assert manifest.dataset.startswith("data-") and manifest.dataset_origin == str(data.resolve())

    copy = tmp_path / "elsewhere" / "copy.npz"
    copy.parent.mkdir()
    shutil.copy(data, copy)
    evaluate = ["evaluate", "--space", "tiny", "--filter", "ConvNet-D1-W4-AR-*", "--epochs", "1", "--no-progress",
                "--proxy", "p.npz"]
    code, _, err = run(capsys, *evaluate, "--dataset", str(copy), "--out", "run")  # same data, another path
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "protocol.json").read_text())["dataset"] == manifest.dataset

    code, out, err = run(capsys, "eval-proxy", "p.npz", "--arch", SMALL, "--models", "1", "--epochs", "1",
                         "--no-progress")  # finds its data through the manifest
    assert code == 0 and "accuracy:" in out, err

    own_npz(data, seed=1)  # other data at the same path
    code, _, err = run(capsys, *evaluate, "--dataset", "data/mine.npz", "--out", "run2")
    assert code == 2 and "p.npz was built from dataset 'data-" in err and "not 'data-" in err
    assert err.count("\n") == 1 and not (tmp_path / "run2").exists()
    code, _, err = run(capsys, "eval-proxy", "p.npz", "--models", "1", "--epochs", "1")
    assert code == 2 and "the file changed since the build" in err


def test_a_proxy_from_before_content_ids_matches_its_file_by_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    own_npz(tmp_path / "mine.npz")
    assert run(capsys, "build", "--method", "random", "--dataset", "mine.npz", "--ipc", "2", "--out", "p.npz",
               "--no-progress")[0] == 0
    with np.load("p.npz") as f:
        arrays = {k: f[k] for k in f.files}
    manifest = json.loads(str(arrays["manifest"]))
    manifest["dataset"] = "mine.npz"  # as nas-proxy 0.1.0 wrote it: the path typed at build time
    del manifest["dataset_origin"], manifest["manifest_hash"]
    np.savez("p.npz", **{**arrays, "manifest": np.array(json.dumps(manifest))})
    code, out, err = run(capsys, "eval-proxy", "p.npz", "--arch", SMALL, "--models", "1", "--epochs", "1",
                         "--no-progress")
    assert code == 0 and "accuracy:" in out
    assert "note: p.npz: its manifest is not protected by a hash" in err
    assert "note: p.npz: built before datasets had content ids; matched to mine.npz by its path only" in err


def test_outputs_under_a_file_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code, _, err = run(capsys, "build", "--method", "random", "--dataset", "synthetic", "--ipc", "1",
                       "--out", str(blocker / "p.npz"), "--no-progress")
    assert code == 2 and err == f"error: cannot create {blocker} (File exists); choose another --out\n"
    assert run(capsys, "build", "--method", "random", "--dataset", "synthetic", "--ipc", "1",
               "--out", str(tmp_path / "p.npz"), "--no-progress")[0] == 0
    code, _, err = run(capsys, "show", str(tmp_path / "p.npz"), "--out", str(blocker / "grid.png"))
    assert code == 2 and err.endswith(f"error: File exists: {blocker} (a file is in the way of a folder)\n")
