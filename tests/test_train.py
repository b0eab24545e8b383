from __future__ import annotations

import pytest
import torch

from nas_proxy.data import Split
from nas_proxy.errors import NasProxyError
from nas_proxy.models import build_model
from nas_proxy.space import ArchSpec
from nas_proxy.train import (
    CPU_EVAL_BYTES,
    GPU_EVAL_BYTES,
    TrainConfig,
    accuracy,
    eval_batch_size,
    train_and_evaluate,
    train_model,
)

SMALL = ArchSpec(depth=2, width=8)


def test_training_learns_synthetic_data(tiny_data: tuple[Split, Split]) -> None:
    train, test = tiny_data
    out = train_and_evaluate(SMALL, train, test, TrainConfig(epochs=15, batch_size=64), seed=0)
    assert out.status == "ok" and out.accuracy > 0.6
    assert out.steps == 15 * 5 and out.params > 0


def test_same_seed_same_result_on_cpu(tiny_data: tuple[Split, Split]) -> None:
    train, test = tiny_data
    cfg = TrainConfig(epochs=2, batch_size=32)
    a = train_and_evaluate(SMALL, train, test, cfg, seed=3)
    b = train_and_evaluate(SMALL, train, test, cfg, seed=3)
    assert a.accuracy == b.accuracy and a.steps == b.steps


def test_lr_decays_once_at_half(tiny_data: tuple[Split, Split]) -> None:
    train, _ = tiny_data
    model = build_model(SMALL, seed=0)
    lrs: list[int] = []

    def spy(epoch: int, m: torch.nn.Module) -> None:
        lrs.append(epoch)

    cfg = TrainConfig(epochs=4, batch_size=300)  # one step an epoch
    stats = train_model(model, train, cfg, seed=0, on_epoch=spy)
    assert stats.steps == 4 and lrs == [1, 2, 3, 4]
    assert [cfg.lr_at(s, 4) for s in range(4)] == pytest.approx([0.01, 0.01, 0.001, 0.001])


def test_max_steps_caps_training(tiny_data: tuple[Split, Split]) -> None:
    train, _ = tiny_data
    stats = train_model(build_model(SMALL, seed=0), train, TrainConfig(epochs=50, batch_size=32, max_steps=7), seed=0)
    assert stats.steps == 7


def test_divergence_is_reported_not_raised(tiny_data: tuple[Split, Split]) -> None:
    train, test = tiny_data
    out = train_and_evaluate(
        ArchSpec(depth=1, width=8, norm="none"), train, test, TrainConfig(epochs=3, lr=1e6, momentum=0.0), seed=0
    )
    assert out.status == "diverged"


def test_accuracy_counts_correct_predictions() -> None:
    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float()

    images = torch.tensor([0.0, 1.0, 2.0, 2.0]).view(4, 1, 1, 1)
    split = Split(images, torch.tensor([0, 1, 1, 2]), 3, "hand", (0.0,), (1.0,))
    assert accuracy(Fixed(), split, batch_size=3) == 0.75


def test_config_validation_and_hash() -> None:
    with pytest.raises(NasProxyError, match="epochs"):
        TrainConfig(epochs=0)
    assert TrainConfig().hash == TrainConfig().hash != TrainConfig(epochs=100).hash


def test_eval_batch_size_keeps_an_activation_near_the_cache_budget() -> None:
    split = Split(torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long), 10, "tiny", (0.0,), (1.0,))
    sizes = {w: eval_batch_size(split, w) for w in (1, 8, 32, 128, 4096)}
    for w, b in sizes.items():
        assert 16 <= b <= 2048 and b & (b - 1) == 0  # a power of two in range
        assert b == 16 or b * w * 28 * 28 * 4 <= CPU_EVAL_BYTES
    assert sizes[8] > sizes[32] > sizes[128]  # wider nets, fewer images a forward
    assert sizes[4096] == 16 and sizes[1] == 2048


def test_eval_batch_size_on_an_accelerator_is_large_but_bounded() -> None:
    """Meta tensors stand in for a GPU's: big batches, but a stack of 15 wide nets gets few images."""
    split = Split(
        torch.zeros(4, 1, 28, 28, device="meta"),
        torch.zeros(4, dtype=torch.long, device="meta"),
        10,
        "t",
        (0.0,),
        (1.0,),
    )
    assert eval_batch_size(split, 128) == 2048
    stacked = eval_batch_size(split, 15 * 256)
    assert 16 <= stacked < 2048 and stacked * 15 * 256 * 28 * 28 * 4 <= GPU_EVAL_BYTES


@pytest.mark.parametrize("arch", ["ConvNet-D2-W8-AR-IN-AP", "ConvNet-D2-W4-AS-BN-MP", "ConvNet-D1-W4-AL-LN-NP"])
def test_accuracy_does_not_depend_on_the_batch_size(arch: str) -> None:
    g = torch.Generator().manual_seed(0)
    split = Split(
        torch.randn(300, 1, 28, 28, generator=g), torch.randint(0, 10, (300,), generator=g), 10, "t", (0.0,), (1.0,)
    )
    model = build_model(arch, seed=0)
    model.eval()
    with torch.no_grad():  # per image, eval mode: the same logits in any batch
        whole = model(split.images)
        assert torch.equal(torch.cat([model(split.images[i : i + 16]) for i in range(0, 300, 16)]), whole)
    assert accuracy(model, split) == accuracy(model, split, batch_size=2048) == accuracy(model, split, batch_size=7)


@pytest.mark.parametrize("arch", ["ConvNet-D2-W8-AR-IN-AP", "ConvNet-D2-W8-AR-BN-AP"])
def test_micro_batches_give_the_whole_batch_training_up_to_rounding(
    tiny_data: tuple[Split, Split], arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forced small micro-batches: per-image nets run in pieces, BatchNorm ones whole; same weights."""
    import nas_proxy.microbatch as microbatch

    train, _ = tiny_data
    cfg = TrainConfig(epochs=2, batch_size=32)
    whole = build_model(arch, seed=0)
    train_model(whole, train, cfg, seed=0)
    height, width = train.images.shape[-2:]
    monkeypatch.setattr(microbatch, "MICRO_BATCH_BYTES", 7 * 8 * height * width * 4)  # 7 images
    model = build_model(arch, seed=0)
    calls: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: calls.append(len(args[0])))
    stats = train_model(model, train, cfg, seed=0)
    if "BN" in arch:
        assert max(calls) == 32
        for key, value in whole.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key
    else:
        assert max(calls) == 7 and len(calls) > stats.steps
        for key, value in whole.state_dict().items():
            torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)


# ----------------------------------------------------------------------------- learning curves (issue 16)


def test_a_curve_point_equals_a_separate_shorter_run(tiny_data: tuple[Split, Split]) -> None:
    """decay_at=1.0 keeps the lr constant, so the run cut at step k (max_steps=k) is the same training."""
    train, test = tiny_data
    cfg = TrainConfig(epochs=4, batch_size=64, decay_at=1.0, curve=(1, 3), curve_steps=(7,))
    out = train_and_evaluate(SMALL, train, test, cfg, seed=2)
    per_epoch = 5  # 300 images / 64
    assert [p["step"] for p in out.curve] == [5, 7, 15]
    assert [p["epoch"] for p in out.curve] == [1.0, 1.4, 3.0]
    for point in out.curve:
        short = TrainConfig(epochs=4, batch_size=64, decay_at=1.0, max_steps=point["step"])
        alone = train_and_evaluate(SMALL, train, test, short, seed=2)
        assert point["accuracy"] == alone.accuracy
        assert point["loss"] > 0
    # Whole epochs: also equal to a run of that many epochs.
    two = train_and_evaluate(SMALL, train, test, TrainConfig(epochs=3, batch_size=64, decay_at=1.0), seed=2)
    assert out.curve[2]["accuracy"] == two.accuracy and out.curve[2]["step"] == 3 * per_epoch


def test_recording_a_curve_changes_nothing_in_the_training(tiny_data: tuple[Split, Split]) -> None:
    train, test = tiny_data
    plain = train_and_evaluate(SMALL, train, test, TrainConfig(epochs=4, batch_size=64), seed=1)
    curved = train_and_evaluate(SMALL, train, test, TrainConfig(epochs=4, batch_size=64, curve=(1, 2, 3, 4)), seed=1)
    assert curved.accuracy == plain.accuracy and curved.steps == plain.steps
    assert curved.curve[-1]["accuracy"] == plain.accuracy  # the last point is the run's own end
    assert plain.curve == ()


def test_stacked_seeds_record_the_same_curves(tiny_data: tuple[Split, Split]) -> None:
    from nas_proxy.plan import train_many

    train, test = tiny_data
    cfg = TrainConfig(epochs=3, batch_size=64, curve=(1, 2, 3), curve_steps=(2,))
    spec = ArchSpec(depth=2, width=8, act="relu", norm="instancenorm", pool="avgpool")
    stacked = train_many(spec, train, test, cfg, [0, 1], strategy="stacked")
    for seed, out in zip([0, 1], stacked, strict=True):
        alone = train_and_evaluate(spec, train, test, cfg, seed=seed)
        assert [p["step"] for p in out.curve] == [p["step"] for p in alone.curve] == [2, 5, 10, 15]
        for a, b in zip(out.curve, alone.curve, strict=True):
            assert a["accuracy"] == pytest.approx(b["accuracy"], abs=2 / len(test))  # float tolerance: 2 images
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)


def test_curve_config_hash_and_parsing() -> None:
    from nas_proxy.train import ladder, parse_curve

    # A config without a curve keeps the hash it had before curves existed (stores resume).
    assert TrainConfig(epochs=100).hash == "591304a772fa"
    assert TrainConfig(epochs=1).hash == "199167f31859"
    assert TrainConfig(epochs=10, curve=(1, 2)).hash != TrainConfig(epochs=10).hash
    assert TrainConfig(epochs=10, curve=[2, 1, 2]).curve == (1, 2)  # type: ignore[arg-type]  # JSON lists
    assert TrainConfig(epochs=10, curve=(1, 2)).without_curve() == TrainConfig(epochs=10)
    assert ladder(10) == [1, 2, 4, 8, 10] and ladder(1) == [1]
    assert parse_curve("ladder,100s", 8) == ((1, 2, 4, 8), (100,))
    assert parse_curve("every", 3) == ((1, 2, 3), ())
    assert parse_curve("", 3) == ((), ())
    assert TrainConfig(epochs=2, batch_size=100, curve=(1, 2), curve_steps=(1, 999)).record_steps(300) == [1, 3, 6]
    for bad, message in (("x", "bad curve point 'x'"), ("0", "at least 1"), ("12", "past the run's 10 epochs")):
        with pytest.raises(NasProxyError, match=message):
            parse_curve(bad, 10)
