"""Property-based checks (hypothesis) of everything that reads a user's files or arguments.

Generated datasets, proxy files, image folders, search-space files and command lines with wrong
shapes, dtypes, labels, NaN, empty and object arrays, truncations and flipped bytes: each either
loads valid or raises the project's error (a NasProxyError; exit 2 with one ``error:`` line at
the command line), never another exception, never an unpickling.

Examples are derandomized, so the default suite is repeatable;
``HYPOTHESIS_PROFILE=explore pytest tests/test_properties.py`` searches more, at random.
"""

from __future__ import annotations

import json
import os
import pickle
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nas_proxy.cli import main
from nas_proxy.data import load_dataset, make_synthetic
from nas_proxy.errors import NasProxyError
from nas_proxy.proxies import ProxySet, get_builder, load_proxy, save_proxy
from nas_proxy.proxies.artifact import content_hash, manifest_hash

settings.register_profile(
    "default", derandomize=True, database=None, deadline=None, max_examples=100,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "explore", derandomize=False, database=None, deadline=None, max_examples=1000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


# ----------------------------------------------------------------------------- never unpickle


class Boom:
    """An object whose unpickling is recorded: a real attack would run code there."""

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return (_unpickled, ())


UNPICKLED: list[bool] = []
HERE = os.getcwd()


def _unpickled() -> None:
    UNPICKLED.append(True)


@pytest.fixture(autouse=True)
def never_unpickled() -> Iterator[None]:
    yield
    assert not UNPICKLED, "a loader unpickled a file"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("props")


def fresh(work: Path, suffix: str = ".npz") -> Path:
    # A new name per example: a reused path with the same size and mtime could hit the decoded cache.
    return work / f"{uuid.uuid4().hex}{suffix}"


# ----------------------------------------------------------------------------- byte-level damage

damage = st.one_of(
    st.none(),
    st.none(),  # twice: most files arrive whole
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("garbage"), st.binary(max_size=64)),
)


def apply_damage(path: Path, how: Any) -> None:
    if how is None:
        return
    raw = path.read_bytes()
    if how[0] == "truncate":
        path.write_bytes(raw[: int(len(raw) * how[1])])
    elif how[0] == "flip":
        at = min(int(len(raw) * how[1]), len(raw) - 1)
        path.write_bytes(raw[:at] + bytes([raw[at] ^ how[2]]) + raw[at + 1 :])
    else:
        path.write_bytes(how[1])


# ----------------------------------------------------------------------------- arrays

DTYPES = [np.uint8, np.int64, np.int32, np.uint16, np.uint64, np.float32, np.float64, np.float16, np.bool_,
          np.complex64, np.dtype("U2"), np.dtype("S2"), np.dtype("datetime64[s]"), np.dtype([("a", "u1")])]


@st.composite
def odd_array(draw: st.DrawFn) -> np.ndarray:
    """Any small array: any of DTYPES (or objects), any rank 0-5, sides 0-5, NaN and inf allowed."""
    if draw(st.integers(0, 9)) == 0:
        return np.array([Boom() for _ in range(draw(st.integers(0, 3)))], dtype=object)
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5))
    return draw(hnp.arrays(dtype, shape))


@st.composite
def dataset_arrays(draw: st.DrawFn) -> dict[str, Any]:
    """The four arrays of an own dataset: a valid one, then none to three things broken in it."""
    k, per, side = draw(st.integers(2, 3)), draw(st.integers(1, 4)), draw(st.sampled_from([4, 6]))
    layout = draw(st.sampled_from(["nhw", "nhwc", "nchw"]))

    def x(n: int) -> np.ndarray:
        shape = {"nhw": (n, side, side), "nhwc": (n, side, side, 3), "nchw": (n, 1, side, side)}[layout]
        if draw(st.booleans()):
            return draw(hnp.arrays(np.uint8, shape))
        return draw(hnp.arrays(np.float32, shape, elements=st.floats(0, 1, width=32)))

    out: dict[str, Any] = {"x_train": x(k * per), "y_train": np.arange(k * per) % k, "x_test": x(k),
                           "y_test": np.arange(k)}
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        if not out:
            break
        key = draw(st.sampled_from(sorted(out)))
        how = draw(st.sampled_from(["anything", "drop", "value", "empty", "dtype"]))
        a = out.get(key)
        if a is None or how == "drop":
            out.pop(key, None)
        elif how == "anything" or a.ndim == 0 or a.dtype.kind not in "biuf":
            out[key] = draw(odd_array())
        elif how == "empty":
            out[key] = a[:0]
        elif how == "dtype":
            with np.errstate(all="ignore"):  # NaN to int and friends: whatever comes out is the test
                out[key] = a.astype(draw(st.sampled_from([np.int64, np.float64, np.float16, np.bool_, np.uint16])))
        elif a.size:  # one value: a label of -1, 1e6 or another class; a pixel of NaN, inf or 1e39
            flat = a.astype(np.float64).reshape(-1)
            values = [-1, 2, 3, 10**6] if key.startswith("y") else [np.nan, np.inf, -np.inf, 1e39, -3e38, 255]
            flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from(values))
            with np.errstate(all="ignore"):
                out[key] = flat.reshape(a.shape).astype(a.dtype if key.startswith("y") else np.float64)
    return out


def check_valid(train: Any, test: Any) -> None:
    """What every dataset that loads must be."""
    c = train.num_classes
    assert c >= 2 and test.num_classes == c
    assert sorted(train.labels.unique().tolist()) == list(range(c))
    assert set(test.labels.tolist()) <= set(range(c))
    assert train.images.shape[1:] == test.images.shape[1:] and train.images.shape[-1] == train.images.shape[-2]
    assert len(train) > 0 and len(test) > 0
    assert bool(torch.isfinite(train.images).all()) and bool(torch.isfinite(test.images).all())


@given(arrays=dataset_arrays(), how=damage)
def test_own_npz_datasets_load_valid_or_raise_our_error(work: Path, arrays: dict[str, Any], how: Any) -> None:
    path = fresh(work)
    np.savez(path, **arrays)  # pickles object arrays into the file: loading must refuse them
    apply_damage(path, how)
    try:
        train, test = load_dataset(str(path))
    except NasProxyError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        event("refused")
        return
    event("loaded")
    check_valid(train, test)
    assert train.dataset.startswith("data-")


image_file = st.tuples(
    st.sampled_from(["train", "test"]),
    st.sampled_from(["a", "b", "c"]),
    st.one_of(st.binary(max_size=40),
              st.tuples(st.sampled_from(["L", "L", "RGB", "RGBA", "P", "1", "I;16"]), st.sampled_from([4, 4, 6]))),
)


# A valid folder (classes, images per class, side, mode) or none, then up to 4 files on top.
@given(base=st.none() | st.tuples(st.integers(2, 3), st.integers(1, 3), st.sampled_from([4, 6]),
                                  st.sampled_from(["L", "RGB"])),
       files=st.lists(image_file, max_size=4))
def test_image_folders_load_valid_or_raise_our_error(
    work: Path, base: tuple[int, int, int, str] | None, files: list[tuple[str, str, Any]]
) -> None:
    from PIL import Image

    root = fresh(work, "")
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
    if base is not None:
        k, per, side, mode = base
        valid = [(split, cls, (mode, side)) for split in ("train", "test") for cls in "abc"[:k] for _ in range(per)]
        files = valid + files
    for i, (split, cls, content) in enumerate(files):
        (root / split / cls).mkdir(exist_ok=True)
        if isinstance(content, bytes):
            (root / split / cls / f"{i}.png").write_bytes(content)
        else:
            mode, side = content
            Image.new(mode, (side, side)).save(root / split / cls / f"{i}.png")
    try:
        train, test = load_dataset(str(root))
    except NasProxyError as exc:
        assert "\n" not in str(exc)
        event("refused")
        return
    event("loaded")
    check_valid(train, test)


# ----------------------------------------------------------------------------- proxy files


@pytest.fixture(scope="module")
def proxy() -> ProxySet:
    train, _ = make_synthetic(num_classes=3, train_per_class=4, test_per_class=1, size=6)
    return get_builder("random", ipc=2, seed=0).build(train)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
FIELDS = ["method", "params", "dataset", "num_classes", "ipc", "seed", "build_seconds", "images", "bytes",
          "content_hash", "mean", "std", "indices", "format_version", "extra", "dataset_origin", "manifest_hash"]


@st.composite
def proxy_edits(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Edits of a saved proxy: manifest fields, arrays replaced, arrays dropped."""
    edits: list[tuple[str, Any]] = []
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        what = draw(st.sampled_from(["plausible", "field", "field", "array", "drop", "empty"]))
        if what == "plausible":  # edits a forger would make; resealed they load
            edits.append(("field", draw(st.sampled_from(
                [("seed", 7), ("build_seconds", 1.5), ("created", "x"), ("extra", {"a": [1]}), ("params", {}),
                 ("dataset", "mnist"), ("dataset_origin", "/nowhere"), ("method", "dm")]))))
        elif what == "field":
            value = draw(json_values | st.integers(0, 8) | st.sampled_from(["", "x", 0.5, {}]))
            edits.append(("field", (draw(st.sampled_from(FIELDS)), value)))
        elif what == "array":
            edits.append(("array", (draw(st.sampled_from(["images", "labels", "manifest"])), draw(odd_array()))))
        else:
            edits.append((what, draw(st.sampled_from(["images", "labels", "manifest"]))))
    return edits


@given(edits=proxy_edits(), reseal=st.booleans(), how=st.none() | damage)
def test_proxy_files_load_valid_or_raise_our_error(
    work: Path, proxy: ProxySet, edits: list[tuple[str, Any]], reseal: bool, how: Any
) -> None:
    path = save_proxy(proxy, fresh(work))
    with np.load(path) as f:
        arrays: dict[str, Any] = {k: f[k] for k in f.files}
    manifest = json.loads(str(arrays["manifest"]))
    for what, edit in edits:
        if what == "field":
            manifest[edit[0]] = edit[1]
        elif what == "array":
            arrays[edit[0]] = edit[1]
        elif what == "drop":
            arrays.pop(edit, None)
        else:
            arrays[edit] = np.zeros((0,) * (4 if edit == "images" else 1), np.float32 if edit == "images" else np.int64)
    if reseal:  # a consistent forgery: the checks behind the manifest hash must still hold
        manifest["manifest_hash"] = manifest_hash(manifest)
    if "manifest" in arrays and arrays["manifest"].dtype.kind == "U":
        arrays["manifest"] = np.array(json.dumps(manifest))
    np.savez(path, **arrays)
    apply_damage(path, how)
    try:
        loaded = load_proxy(path)
    except NasProxyError as exc:
        assert "\n" not in str(exc)
        event("refused")
        return
    event("loaded")
    m = loaded.manifest
    assert loaded.images.ndim == 4 and len(loaded) == m.images == m.ipc * m.num_classes > 0
    assert torch.bincount(loaded.labels, minlength=m.num_classes).tolist() == [m.ipc] * m.num_classes
    assert content_hash(loaded.images, loaded.labels) == m.content_hash
    assert bool(torch.isfinite(loaded.images).all())


def test_pickled_files_are_refused_everywhere(work: Path) -> None:
    path = fresh(work)
    path.write_bytes(pickle.dumps({"images": Boom()}))
    for load in (load_proxy, load_dataset):
        with pytest.raises(NasProxyError, match="a pickle, which is never loaded"):
            load(str(path))


# ----------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory: pytest.TempPathFactory, proxy: ProxySet) -> dict[str, str]:
    """A tiny valid dataset, its proxy, a run directory, and broken versions of each."""
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    data = d / "data.npz"
    np.savez(data, x_train=rng.integers(0, 256, (8, 8, 8), dtype=np.uint8), y_train=np.arange(8) % 2,
             x_test=rng.integers(0, 256, (4, 8, 8), dtype=np.uint8), y_test=np.arange(4) % 2)
    train, _ = load_dataset(str(data))
    good_proxy = save_proxy(get_builder("random", ipc=2, seed=0).build(train), d / "proxy.npz")
    broken = d / "broken.npz"
    broken.write_bytes(good_proxy.read_bytes()[:300])
    garbage_run = d / "garbage-run"
    garbage_run.mkdir()
    (garbage_run / "protocol.json").write_text("[1, 2")
    (garbage_run / "runs.jsonl").write_text('{"arch_id": 3}\nnot json\n')
    bad_space = d / "bad.toml"
    bad_space.write_bytes(b"name = 3\n[axes]\ndepth = 7\n\xff\xfe")
    odd_space = d / "odd.toml"
    odd_space.write_text('[axes]\ndepth = [0]\nwidth = ["x"]\n')
    a_file = d / "file.txt"
    a_file.write_text("x")
    good_run = d / "good-run"
    assert main(["evaluate", "--space", "tiny", "--filter", "ConvNet-D1-W4-AR-IN-*", "--dataset", str(data),
                 "--proxy", str(good_proxy), "--full", "--epochs", "1", "--no-progress", "--out", str(good_run)]) == 0
    named = {"data": data, "proxy": good_proxy, "good_run": good_run, "broken": broken, "garbage_run": garbage_run,
             "bad_space": bad_space, "odd_space": odd_space, "file": a_file, "missing": d / "missing.npz",
             "blocked": a_file / "under-a-file", "dir": d}
    return {k: str(v) for k, v in named.items()}


def junk(files: dict[str, str]) -> st.SearchStrategy[str]:
    """An argument value: a number, some text, or one of the test's files (good and broken)."""
    return st.one_of(
        st.integers(-3, 3).map(str), st.sampled_from(["", "-", "1e9", "nan", "0.5", "all", "none", "x=y", "=",
                                                       "ConvNet-D9", "ConvNet-D1-W4-AR-IN-AP", "10,25", "ladder",
                                                       "every", "100s", "5%", "[", "*"]),
        st.sampled_from(sorted(files.values())), st.text(alphabet=st.characters(blacklist_characters="\x00"),
                                                         max_size=6),
    )


@st.composite
def command_lines(draw: st.DrawFn, files: dict[str, str], out: str) -> list[str]:
    """A command with a few of its own flags (values from :func:`junk`), small enough to run in seconds."""
    j = junk(files)
    dataset = st.sampled_from([files["data"], files["missing"], files["broken"], files["dir"], "synthetic", "x"])
    proxies = st.sampled_from([files["proxy"], files["broken"], files["missing"], files["data"], files["file"]])
    small = st.sampled_from(["0", "1", "2", "-1"])
    arch = st.sampled_from(["ConvNet-D1-W4-AR-IN-AP", "ConvNet-D4-W4-AR-IN-MP", "ConvNet-D9"])
    runs = st.sampled_from([files["good_run"], files["good_run"], out, files["garbage_run"], files["missing"],
                            files["file"], files["blocked"]])
    spaces = st.sampled_from(["tiny", "nope", files["bad_space"], files["odd_space"], files["missing"]])
    flags: dict[str, list[tuple[str, st.SearchStrategy[str] | None]]] = {
        "space list": [("--sample", small), ("--seed", j), ("--filter", j)],
        "space show": [("--space", spaces), ("--dataset", j)],
        "train": [("--dataset", dataset), ("--epochs", small), ("--train-subset", small), ("--arch", arch),
                  ("--seed", j)],
        "build": [("--dataset", dataset), ("--ipc", small), ("--set", j), ("--seed", small),
                  ("--out", st.sampled_from([out + "/p.npz", files["blocked"] + "/p.npz"]))],
        "eval-proxy": [("--models", small), ("--epochs", small), ("--test-subset", small), ("--arch", arch),
                       ("--dataset", dataset)],
        "show": [("--per-class", small), ("--out", st.sampled_from([out + "/g.png", files["blocked"] + "/g.png"]))],
        "evaluate": [("--dataset", dataset), ("--proxy", proxies), ("--full", None), ("--early-stopping", None),
                     ("--epochs", small), ("--curve", j), ("--seeds", small), ("--n-jobs", small),
                     ("--rankers", st.sampled_from(["params", "synflow", "x"])), ("--out", runs),
                     ("--ground-truth", proxies), ("--sample", small), ("--space", spaces)],
        "runs": [],
        "report": [("--topk", j), ("--bootstrap", small), ("--out", runs)],
        "ground-truth": [("--out", st.sampled_from([out + "/gt.csv", files["blocked"] + "/gt.csv"]))],
    }
    command = draw(st.sampled_from(sorted(flags)))
    argv = command.split()
    # The defaults are Fashion-MNIST (minutes) and folders under the working directory: never those.
    argv += {"train": ["--dataset", files["data"]], "build": ["--dataset", files["data"], "--out", out + "/p.npz"],
             "evaluate": ["--dataset", files["data"], "--out", out + "/run"]}.get(command, [])
    if command == "space show":
        argv.append(draw(arch))
    elif command in ("eval-proxy", "show"):
        argv.append(draw(proxies))
    elif command in ("runs", "report", "ground-truth"):
        argv.append(draw(runs))
    elif command == "build":
        method = draw(st.sampled_from(["random", "herding", "dc", "dm", "forgetting", "nope"]))
        argv += ["--method", method]
        # Keep the expensive parts short; generated --set values still come on top.
        argv += {"herding": ["--set", "embed_epochs=1"], "forgetting": ["--set", "epochs=1"],
                 "dc": ["--set", "iterations=1", "--set", "inner_loop=1", "--set", "outer_loop=1"],
                 "dm": ["--set", "iterations=1"]}.get(method, [])
    if command == "evaluate":
        argv += ["--space", "tiny", "--filter", "ConvNet-D1-W4-AR-IN-*", "--epochs", "1"]
        argv += draw(st.sampled_from([["--proxy", files["proxy"]], ["--full"], []]))
    if command in ("train", "eval-proxy"):
        argv += ["--epochs", "1", "--arch", "ConvNet-D1-W4-AR-IN-AP"]
    if command in ("eval-proxy", "build", "evaluate"):
        argv.append("--no-progress")
    if command == "report":
        argv.append("--no-figures")
    options = flags[command]
    for flag, value in draw(st.lists(st.sampled_from(options), max_size=3)) if options else []:
        argv.append(flag)
        if value is not None:
            argv.append(draw(value))
    return argv


@given(data=st.data())
def test_command_lines_exit_0_or_2_with_one_error_line(
    cli_files: dict[str, str], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = str(tmp_path_factory.mktemp("out"))
    os.chdir(out)  # anything still written relative lands here (restored below)
    argv = data.draw(command_lines(cli_files, out), label="argv")
    assume("--epochs" not in argv or argv[argv.index("--epochs") + 1] in ("0", "1", "-1"))
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    finally:
        os.chdir(HERE)
    err = capsys.readouterr().err
    event(f"{argv[0]}: exit {code}")
    assert "Traceback" not in err
    assert code in (0, 2), (argv, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if code == 2:
        assert len(errors) == 1 and err.splitlines()[-1] == errors[0], (argv, err)
    else:
        assert not errors, (argv, err)
