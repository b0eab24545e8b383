from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nas_proxy.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_space_list_all_and_sample(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "space", "list", "convnet720")
    ids = out.split()
    assert code == 0 and len(ids) == 720 == len(set(ids))
    _, first, _ = _run(capsys, "space", "list", "convnet720", "--sample", "24", "--seed", "0")
    _, again, _ = _run(capsys, "space", "list", "convnet720", "--sample", "24", "--seed", "0")
    assert first == again and len(first.split()) == 24
    tokens = {t for line in first.split() for t in line.split("-")}
    assert {"D1", "D2", "D3", "D4", "W32", "W64", "W128", "W256"} <= tokens
    assert {"AS", "AR", "AL", "NN", "BN", "LN", "IN", "GN", "NP", "MP", "AP"} <= tokens


def test_space_list_filter(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "space", "list", "--filter", "ConvNet-D3-W128-AR-*-AP")
    assert code == 0 and len(out.split()) == 5


def test_space_show(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "space", "show", "ConvNet-D3-W128-AR-IN-AP")
    assert code == 0 and "317,706" in out and "flops" in out
    code, out, _ = _run(capsys, "space", "show", "ConvNet-D3-W128-AR-IN-AP", "--dataset", "cifar10")
    assert code == 0 and "3x32x32" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["space", "list", "nosuch"], "unknown search space 'nosuch'; valid: convnet720"),
        (["space", "show", "ConvNet-D9-W128-AR-IN-AP"], "depth 9 is not one of 1, 2, 3, 4"),
        (["space", "show", "ConvNet-D3-W128-AR-XX-AP"], "valid: NN, BN, LN, IN, GN"),
        (["space", "list", "--sample", "0"], "between 1 and 720"),
        (["space", "show", "ConvNet-D3-W128-AR-IN-AP", "--dataset", "nope"], "unknown dataset"),
        (["train", "--arch", "bad", "--dataset", "synthetic"], "malformed architecture id"),
        (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["train", "--dataset", "synthetic", "--epochs", "0"], "epochs must be at least 1"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err


def test_argparse_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["space", "list", "--sample", "x"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_train_on_npz(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    x = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=np.arange(40) % 4, x_test=x[:8], y_test=np.arange(8) % 4)
    code, out, _ = _run(
        capsys,
        "train",
        "--arch",
        "ConvNet-D1-W4-AR-IN-AP",
        "--dataset",
        str(path),
        "--epochs",
        "1",
        "--train-subset",
        "20",
    )
    assert code == 0 and "accuracy:" in out and "20 images" in out
