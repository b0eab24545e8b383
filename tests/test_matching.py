"""DC / DSA / DM: the gradient distance by hand, loops, validation, determinism, resume, and that matching works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from nas_proxy.data import Split, make_synthetic
from nas_proxy.errors import NasProxyError
from nas_proxy.models import build_model
from nas_proxy.proxies import get_builder, parse_params
from nas_proxy.proxies import matching as M
from nas_proxy.proxies.matching import DC, DM, DSA, distance

ARCH = "ConvNet-D2-W8-AR-IN-AP"


@pytest.fixture(scope="module")
def data() -> Split:
    """4 classes x 12 images of 1x16x16: enough for a ConvNet with two pooled blocks."""
    train, _ = make_synthetic(num_classes=4, train_per_class=12, test_per_class=1, size=16, noise=0.5, seed=3)
    return train


# ----------------------------------------------------------------------------- distance by hand


def test_identical_gradients_are_at_distance_zero() -> None:
    g = [torch.randn(4, 2, 3, 3), torch.randn(4), torch.randn(3, 5), torch.randn(3)]
    assert float(distance(g, g, "ours")) == pytest.approx(0.0, abs=1e-5)
    assert float(distance(g, g, "mse")) == 0.0
    assert float(distance(g, g, "cos")) == pytest.approx(0.0, abs=1e-6)


def test_opposite_rows_cost_two_each_and_one_d_tensors_are_ignored() -> None:
    conv, linear = torch.randn(4, 2, 3, 3), torch.randn(3, 5)
    real = [conv, torch.randn(4), linear]
    syn = [-conv, torch.randn(4), -linear]  # different biases: skipped
    assert float(distance(syn, real, "ours")) == pytest.approx(2 * (4 + 3), abs=1e-4)
    # Rows, not whole tensors: flip the sign of one conv output unit only -> 2 for that row.
    one = conv.clone()
    one[1] = -one[1]
    assert float(distance([one, real[1], linear], real, "ours")) == pytest.approx(2.0, abs=1e-4)
    # Orthogonal rows cost 1 each; scaling a row changes nothing.
    a, b = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 3.0], [0.0, 0.5]])
    assert float(distance([a], [b], "ours")) == pytest.approx(1.0, abs=1e-4)
    assert float(distance([a * 7], [a], "ours")) == pytest.approx(0.0, abs=1e-5)


def test_layernorm_affine_rows_are_channels() -> None:
    """A (C, H, W) layernorm gradient is compared as C rows of H*W: flipping channel 1 costs 2."""
    real = torch.randn(3, 4, 4)
    syn = real.clone()
    syn[1] = -syn[1]
    assert float(distance([syn], [real], "ours")) == pytest.approx(2.0, abs=1e-4)
    # Flipping one spatial row of every channel is a partial change, not 2 per channel.
    part = real.clone()
    part[:, 0] = -part[:, 0]
    assert 0 < float(distance([part], [real], "ours")) < 2 * 3


def test_mse_and_cos_use_every_tensor_concatenated() -> None:
    real = [torch.tensor([[1.0, 2.0]]), torch.tensor([3.0])]
    syn = [torch.tensor([[1.0, 0.0]]), torch.tensor([0.0])]
    assert float(distance(syn, real, "mse")) == pytest.approx(4.0 + 9.0)
    cos = 1.0 / (14**0.5 * 1.0)
    assert float(distance(syn, real, "cos")) == pytest.approx(1 - cos, abs=1e-6)
    assert float(distance([-real[0], -real[1]], real, "cos")) == pytest.approx(2.0, abs=1e-6)


def test_distance_is_differentiable_in_the_synthetic_gradient() -> None:
    real = [torch.randn(3, 4)]
    syn = torch.randn(3, 4, requires_grad=True)
    for metric in M.DISTANCES:
        (grad,) = torch.autograd.grad(distance([syn], real, metric), syn)
        assert float(grad.abs().sum()) > 0


def test_distance_refuses_mismatched_inputs() -> None:
    with pytest.raises(NasProxyError, match="unknown gradient distance 'l1'; valid: ours, mse, cos"):
        distance([torch.ones(2, 2)], [torch.ones(2, 2)], "l1")
    with pytest.raises(NasProxyError, match="shapes differ"):
        distance([torch.ones(2, 2)], [torch.ones(2, 3)])
    with pytest.raises(NasProxyError, match="differ in length"):
        distance([torch.ones(2, 2)], [])


# ----------------------------------------------------------------------------- settings


def test_loops_follow_the_reference_table_and_the_nearest_entry() -> None:
    assert [M.default_loops(i) for i in (1, 10, 20, 30, 40, 50)] == [
        (1, 1),
        (10, 50),
        (20, 25),
        (30, 20),
        (40, 15),
        (50, 10),
    ]
    assert M.default_loops(2) == (1, 1) and M.default_loops(7) == (10, 50) and M.default_loops(100) == (50, 10)
    assert DC(ipc=10).loops() == (10, 50)
    assert DC(ipc=10, outer_loop=3, inner_loop=2).loops() == (3, 2)


def test_defaults_are_the_papers() -> None:
    dc, dsa, dm = DC(), DSA(), DM()
    assert (dc.iterations, dc.batch_real, dc.lr_img, dc.momentum_img, dc.lr_net, dc.momentum_net) == (
        1000,
        256,
        0.1,
        0.5,
        0.01,
        0.5,
    )
    assert (dc.init, dc.distance, dc.arch, dc.bn_real_per_class) == ("noise", "ours", "ConvNet-D3-W128-AR-IN-AP", 16)
    assert (dsa.init, dsa.momentum_net, dsa.strategy) == ("real", 0.0, None)
    assert (dm.iterations, dm.lr_img, dm.momentum_img, dm.init, dm.batch_real) == (20000, 1.0, 0.5, "real", 256)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("dc", {"iterations": 0}, "iterations must be a positive integer"),
        ("dc", {"outer_loop": 0}, "outer_loop must be a positive integer"),
        ("dc", {"lr_img": -1.0}, "lr_img must be positive"),
        ("dc", {"momentum_net": 1.5}, r"momentum_net must be in \[0, 1\)"),
        ("dc", {"init": "zeros"}, "init must be noise or real"),
        ("dc", {"distance": "l1"}, "unknown distance 'l1'"),
        ("dc", {"arch": "ConvNet-D3-W8-ZZ-IN-AP"}, "ZZ"),
        ("dc", {"real_dtype": "float16"}, "real_dtype must be one of float32, bfloat16"),
        ("dc", {"micro_batch": 0}, "micro_batch must be a positive integer"),
        ("dm", {"micro_batch": -1}, "micro_batch must be a positive integer"),
        ("dsa", {"strategy": "crop_blur"}, "unknown augmentation 'blur'"),
        ("dm", {"batch_real": 0}, "batch_real must be a positive integer"),
        ("dm", {"strategy": "twist"}, "unknown augmentation 'twist'"),
    ],
)
def test_bad_settings_raise_one_clear_error(name: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(NasProxyError, match=message):
        get_builder(name, ipc=1, **params)


def test_cli_style_settings_are_typed() -> None:
    params = parse_params("dc", ["outer_loop=none", "init=real", "distance=cos", "lr_img=0.5", "iterations=7"])
    assert params == {"outer_loop": None, "init": "real", "distance": "cos", "lr_img": 0.5, "iterations": 7}
    assert parse_params("dsa", ["strategy=crop_flip"]) == {"strategy": "crop_flip"}
    with pytest.raises(NasProxyError, match="init must be one of noise, real"):
        parse_params("dm", ["init=zeros"])


def test_too_small_images_for_the_matching_net(data: Split) -> None:
    with pytest.raises(NasProxyError, match="too small"):
        DC(ipc=1, iterations=1, arch="ConvNet-D4-W8-AR-IN-AP").build(_resized(data, 8))


def _resized(split: Split, size: int) -> Split:
    from dataclasses import replace

    return replace(split, images=F.interpolate(split.images, size=(size, size)))


# ----------------------------------------------------------------------------- builds


def _tiny(name: str, **params: Any) -> Any:
    settings: dict[str, Any] = {"ipc": 2, "seed": 0, "iterations": 3, "arch": ARCH}
    if name != "dm":
        settings.update(outer_loop=2, inner_loop=2, batch_real=8)  # exercise the inner loop too
    return get_builder(name, **{**settings, **params})


@pytest.mark.parametrize("name", ["dc", "dsa", "dm"])
def test_deterministic_and_seed_dependent(name: str, data: Split) -> None:
    a, b = _tiny(name).build(data), _tiny(name).build(data)
    assert torch.equal(a.images, b.images)
    assert a.manifest.extra["loss_history"] == b.manifest.extra["loss_history"]
    c = _tiny(name, seed=1).build(data)
    assert not torch.equal(a.images, c.images)
    assert a.manifest.indices is None and a.images.shape == (8, 1, 16, 16)


def test_batchnorm_statistics_come_from_real_data_then_freeze(data: Split) -> None:
    net = build_model("ConvNet-D2-W8-AR-BN-AP", 1, 16, 4, seed=0)
    rows = M.class_rows(data)
    M.freeze_batchnorm(net, data, rows, 3, torch.Generator().manual_seed(0))
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    for m in bns:
        assert m.running_mean is not None and m.num_batches_tracked is not None
        assert float(m.running_mean.abs().sum()) > 0 and int(m.num_batches_tracked) == 1
    proxy = _tiny("dc", arch="ConvNet-D2-W8-AR-BN-AP").build(data)
    assert bool(torch.isfinite(proxy.images).all())


def _interrupt_after(k: int) -> Any:
    def hook(done: int) -> None:
        if done == k:
            raise KeyboardInterrupt

    return hook


@pytest.mark.parametrize("name", ["dc", "dsa", "dm"])
def test_an_interrupted_build_resumes_to_the_same_images(
    name: str, data: Split, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = _tiny(name, iterations=4).build(data)
    ckpt = tmp_path / "build.ckpt"
    monkeypatch.setattr(M, "_on_iteration", _interrupt_after(2))
    with pytest.raises(KeyboardInterrupt):
        _tiny(name, iterations=4).build(data, checkpoint=ckpt)
    assert ckpt.exists()
    saved = torch.load(ckpt, weights_only=True)
    assert saved["iteration"] == 1  # the boundary before the interrupted iteration
    monkeypatch.setattr(M, "_on_iteration", None)
    resumed = _tiny(name, iterations=4).build(data, checkpoint=ckpt)
    assert torch.equal(resumed.images, whole.images)
    assert resumed.manifest.content_hash == whole.manifest.content_hash
    assert resumed.manifest.extra["loss_history"] == whole.manifest.extra["loss_history"]
    assert resumed.manifest.build_seconds >= saved["seconds"] > 0
    # A finished checkpoint is a finished build: a rerun returns the same images at once.
    monkeypatch.setattr(M, "_on_iteration", _interrupt_after(-1))
    again = _tiny(name, iterations=4).build(data, checkpoint=ckpt)
    assert torch.equal(again.images, whole.images)


KILL_DURING_BUILD = """
import os, signal, sys
import torch
from nas_proxy.data import make_synthetic
from nas_proxy.proxies import get_builder
from nas_proxy.proxies import matching as M

torch.set_num_threads(1)  # as the test process: bit-identical iterations
M._on_iteration = lambda done: os.kill(os.getpid(), signal.SIGKILL) if done == 2 else None
train, _ = make_synthetic(num_classes=4, train_per_class=12, test_per_class=1, size=16, noise=0.5, seed=3)
settings = dict(ipc=2, seed=0, iterations=4, arch=sys.argv[2], outer_loop=2, inner_loop=2, batch_real=8)
get_builder("dc", **settings).build(train, checkpoint=sys.argv[1])
"""


def test_a_kill_9_in_the_first_minute_keeps_the_first_iteration(data: Split, tmp_path: Path) -> None:
    # The first checkpoint used to come a minute into the loop: a kill before it lost everything.
    ckpt = tmp_path / "build.ckpt"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_BUILD, str(ckpt), ARCH], env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(ckpt, weights_only=True)["iteration"] == 1
    resumed = _tiny("dc", iterations=4).build(data, checkpoint=ckpt)
    assert torch.equal(resumed.images, _tiny("dc", iterations=4).build(data).images)


def test_periodic_checkpoints(data: Split, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(M, "CHECKPOINT_EVERY_S", 0.0)
    seen: list[int] = []
    ckpt = tmp_path / "p.ckpt"

    def hook(done: int) -> None:
        seen.append(int(torch.load(ckpt, weights_only=True)["iteration"]))

    monkeypatch.setattr(M, "_on_iteration", hook)
    _tiny("dm").build(data, checkpoint=ckpt)
    assert seen == [0, 1, 2]  # saved at every iteration start when the interval is 0


def test_a_checkpoint_of_other_settings_is_refused(
    data: Split, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = tmp_path / "other.ckpt"
    monkeypatch.setattr(M, "_on_iteration", _interrupt_after(1))
    with pytest.raises(KeyboardInterrupt):
        _tiny("dc").build(data, checkpoint=ckpt)
    monkeypatch.setattr(M, "_on_iteration", None)
    with pytest.raises(
        NasProxyError,
        match=r"other\.ckpt: checkpoint of another build \(different params: lr_img 0\.1 in the checkpoint vs 0\.2 now",
    ):
        _tiny("dc", lr_img=0.2).build(data, checkpoint=ckpt)
    with pytest.raises(NasProxyError, match="different method: 'dc' in the checkpoint vs 'dsa' now"):
        _tiny("dsa").build(data, checkpoint=ckpt)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(NasProxyError, match=r"other\.ckpt: unreadable checkpoint"):
        _tiny("dc").build(data, checkpoint=ckpt)


# ----------------------------------------------------------------------------- the matching works


def _dc_loss(images: torch.Tensor, data: Split, ipc: int, nets: int = 6) -> float:
    """Mean over fixed random nets of the summed per-class layer-wise distance (all real images)."""
    total = 0.0
    for s in range(nets):
        net = build_model(ARCH, 1, 16, data.num_classes, seed=100 + s)
        params = [p for p in net.parameters() if p.ndim > 1]
        for c in range(data.num_classes):
            x = data.images[data.indices_of_class(c)]
            y = torch.full((len(x),), c)
            g_real = torch.autograd.grad(F.cross_entropy(net(x), y), params)
            y_syn = torch.full((ipc,), c)
            g_syn = torch.autograd.grad(F.cross_entropy(net(images[c * ipc : (c + 1) * ipc]), y_syn), params)
            total += float(distance(g_syn, g_real))
    return total / nets


def _initial(data: Split, ipc: int, init: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return M.init_images(data, M.class_rows(data), ipc, init, g)


def test_dc_reduces_the_gradient_matching_loss(data: Split) -> None:
    proxy = DC(ipc=2, seed=0, iterations=40, arch=ARCH, batch_real=12).build(data)
    before, after = _dc_loss(_initial(data, 2, "noise"), data, 2), _dc_loss(proxy.images, data, 2)
    assert after < 0.8 * before, (before, after)
    history = proxy.manifest.extra["loss_history"]
    assert len(history) == 40 and history[-1][0] == 40


def test_bfloat16_real_gradients_follow_the_float32_loss(data: Split) -> None:
    exact = DC(ipc=1, seed=0, iterations=3, arch=ARCH, batch_real=12).build(data)
    fast = DC(ipc=1, seed=0, iterations=3, arch=ARCH, batch_real=12, real_dtype="bfloat16").build(data)
    assert fast.manifest.params["real_dtype"] == "bfloat16"
    a = [v for _, v in exact.manifest.extra["loss_history"]]
    b = [v for _, v in fast.manifest.extra["loss_history"]]
    assert a != b  # it did take another path
    assert a == pytest.approx(b, rel=2e-2)
    assert torch.allclose(exact.images, fast.images, atol=5e-2)


def test_dc_in_pieces_follows_the_one_batch_run(data: Split) -> None:
    whole = DC(ipc=1, seed=0, iterations=3, arch=ARCH, batch_real=12).build(data)
    pieces = DC(ipc=1, seed=0, iterations=3, arch=ARCH, batch_real=12, micro_batch=5).build(data)
    assert whole.manifest.extra["micro_batch"] == 12 and pieces.manifest.extra["micro_batch"] == 5
    a = [v for _, v in whole.manifest.extra["loss_history"]]
    b = [v for _, v in pieces.manifest.extra["loss_history"]]
    assert a == pytest.approx(b, rel=1e-5)
    torch.testing.assert_close(pieces.images, whole.images, rtol=1e-5, atol=1e-6)


def test_dm_in_pieces_follows_the_one_batch_run(data: Split) -> None:
    whole = DM(ipc=1, seed=0, iterations=3, arch=ARCH, batch_real=12).build(data)
    pieces = DM(ipc=1, seed=0, iterations=3, arch=ARCH, batch_real=12, micro_batch=5).build(data)
    assert whole.manifest.extra["micro_batch"] == 12 and pieces.manifest.extra["micro_batch"] == 5
    torch.testing.assert_close(pieces.images, whole.images, rtol=1e-5, atol=1e-6)


def _dm_loss(images: torch.Tensor, data: Split, ipc: int, nets: int = 6) -> float:
    total = 0.0
    with torch.no_grad():
        for s in range(nets):
            net = build_model(ARCH, 1, 16, data.num_classes, seed=100 + s)
            for c in range(data.num_classes):
                real = net.embed(data.images[data.indices_of_class(c)]).mean(0)
                syn = net.embed(images[c * ipc : (c + 1) * ipc]).mean(0)
                total += float(((real - syn) ** 2).sum())
    return total / nets


def test_dm_reduces_the_embedding_distance(data: Split) -> None:
    proxy = DM(ipc=2, seed=0, iterations=40, arch=ARCH, init="noise", strategy="none").build(data)
    before, after = _dm_loss(_initial(data, 2, "noise"), data, 2), _dm_loss(proxy.images, data, 2)
    assert after < 0.5 * before, (before, after)


def test_dsa_strategy_follows_the_dataset(data: Split) -> None:
    assert DSA(ipc=1).augmentation(data) == ("color", "crop", "cutout", "flip", "scale", "rotate")
    from dataclasses import replace

    assert "flip" not in DSA(ipc=1).augmentation(replace(data, dataset="mnist"))
    assert DSA(ipc=1, strategy="none").augmentation(data) == ()
    proxy = _tiny("dsa", strategy="crop").build(data)
    assert proxy.manifest.extra["strategy"] == "crop"
