from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from nas_proxy.data import Split, cache_dir, make_synthetic
from nas_proxy.errors import NasProxyError
from nas_proxy.models import build_model
from nas_proxy.proxies import coreset as coreset_module
from nas_proxy.proxies import embedding as embedding_module
from nas_proxy.proxies import get_builder
from nas_proxy.proxies.coreset import (
    Forgetting,
    count_forgetting,
    forgetting_scores,
    herding_indices,
    kcenter_indices,
    most_forgotten,
    random_indices,
)
from nas_proxy.proxies.embedding import embedding_features, train_resumable
from nas_proxy.train import TrainConfig

SMALL = "ConvNet-D1-W8-AR-IN-AP"


# ----------------------------------------------------------------------------- herding


def test_herding_first_pick_is_nearest_the_mean() -> None:
    feats = torch.tensor([[10.0, 0.0], [0.1, 0.1], [-10.0, 0.0], [0.0, 5.0], [0.0, -5.0]])
    assert herding_indices(feats, 1).tolist() == [1]


def test_herding_balances_the_running_mean() -> None:
    # Mean is (0, 0). After the point at the mean, the mean of selected stays closest to the
    # centre by taking a symmetric pair: +x then -x (not the nearer but one-sided (0, 4)).
    feats = torch.tensor([[0.0, 0.0], [3.0, 0.0], [-3.0, 0.0], [0.0, 4.0], [0.0, -4.0]])
    picks = herding_indices(feats, 3).tolist()
    assert picks[0] == 0
    assert sorted(picks[1:]) == [1, 2]
    assert len(set(herding_indices(feats, 5).tolist())) == 5  # every row once, no repeats


def test_herding_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(40, 6, generator=g)
    mu = feats.double().mean(0)
    chosen: list[int] = []
    for _ in range(8):
        best = min(
            (j for j in range(40) if j not in chosen),
            key=lambda j: float(((feats[[*chosen, j]].double().mean(0) - mu) ** 2).sum()),
        )
        chosen.append(best)
    assert herding_indices(feats, 8).tolist() == chosen


# ----------------------------------------------------------------------------- k-center


def test_kcenter_picks_farthest_points() -> None:
    # A cluster near the origin and three far corners: after the central start, the corners.
    feats = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [10.0, 0.0], [0.0, 9.0], [-8.0, 0.0]])
    picks = kcenter_indices(feats, 4).tolist()
    assert picks[0] in (0, 1, 2)
    assert picks[1:] == [3, 4, 5]  # farthest first: 10 > 9 > 8 from the chosen centres


def test_kcenter_first_center_nearest_mean_or_seeded() -> None:
    feats = torch.tensor([[5.0, 5.0], [1.0, 1.0], [-4.0, -4.0], [2.0, 2.0]])  # mean (1, 1)
    assert kcenter_indices(feats, 1).tolist() == [1]
    assert kcenter_indices(feats, 2, seed=3).tolist() == kcenter_indices(feats, 2, seed=3).tolist()
    firsts = {int(kcenter_indices(feats, 1, seed=s)[0]) for s in range(20)}
    assert len(firsts) > 1


def test_kcenter_never_repeats_even_with_duplicates() -> None:
    feats = torch.zeros(5, 3)
    assert sorted(kcenter_indices(feats, 5).tolist()) == [0, 1, 2, 3, 4]


def test_selection_rejects_impossible_k() -> None:
    with pytest.raises(NasProxyError, match="cannot select 4 of 3"):
        herding_indices(torch.zeros(3, 2), 4)
    with pytest.raises(NasProxyError, match=r"\(N, D\)"):
        kcenter_indices(torch.zeros(3), 1)


# ----------------------------------------------------------------------------- forgetting


def test_forgetting_counts_correct_to_incorrect_transitions() -> None:
    t, f = True, False
    history = torch.tensor(
        [
            [t, f, f, t],
            [f, f, t, t],
            [t, f, f, t],
            [f, f, t, t],
        ]
    )
    scores = count_forgetting(history)
    # ex0: T F T F -> 2 events; ex1 never learned -> inf; ex2: F T F T -> 1; ex3 never forgotten -> 0.
    assert scores[0] == 2 and math.isinf(float(scores[1])) and scores[2] == 1 and scores[3] == 0


def test_never_learned_examples_can_go_last() -> None:
    forgets = torch.tensor([2, 0, 1, 0])
    learned = torch.tensor([True, False, True, True])
    assert forgetting_scores(forgets, learned, "last").tolist() == [2.0, -math.inf, 1.0, 0.0]
    assert most_forgotten(forgetting_scores(forgets, learned, "last"), 4, seed=0).tolist() == [0, 2, 3, 1]
    with pytest.raises(NasProxyError, match="never_learned must be one of most, last"):
        forgetting_scores(forgets, learned, "first")


def test_most_forgotten_order_and_seeded_ties() -> None:
    scores = torch.tensor([0.0, math.inf, 2.0, 2.0, 2.0, 1.0])
    picks = most_forgotten(scores, 3, seed=0).tolist()
    assert picks[0] == 1 and set(picks[1:]) <= {2, 3, 4}
    assert most_forgotten(scores, 3, seed=0).tolist() == picks
    tied = {tuple(most_forgotten(scores, 2, seed=s).tolist()) for s in range(10)}
    assert len(tied) > 1  # ties really are broken by the seed, not by position


def test_random_indices_balanced_unique_seeded(tiny_data: tuple[Split, Split]) -> None:
    train, _ = tiny_data
    rows = random_indices(train.labels, 10, 4, seed=1)
    assert len(set(rows.tolist())) == 40
    assert train.labels[rows].tolist() == [c for c in range(10) for _ in range(4)]
    assert torch.equal(rows, random_indices(train.labels, 10, 4, seed=1))
    assert not torch.equal(rows, random_indices(train.labels, 10, 4, seed=2))


def test_forgetting_builder_picks_most_forgotten_per_class(tiny_data: tuple[Split, Split]) -> None:
    train, _ = tiny_data
    proxy = Forgetting(ipc=2, seed=0, arch=SMALL, epochs=3).build(train)
    extra = proxy.manifest.extra
    assert {"never_learned", "max_forgetting_events", "train_seconds"} <= set(extra)
    assert proxy.manifest.indices is not None
    assert torch.equal(proxy.images, train.images[list(proxy.manifest.indices)])


# ----------------------------------------------------------------------------- builders: validation


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("herding", {"embed_arch": "ResNet18"}, "malformed architecture id"),
        ("herding", {"embed_epochs": 0}, "embed_epochs must be a positive integer"),
        ("kcenter", {"first_center": "far"}, "first_center must be one of mean, random"),
        ("forgetting", {"epochs": -1}, "epochs must be a positive integer"),
        ("random", {"ipc": 0}, "ipc"),
    ],
)
def test_builders_reject_bad_hyperparameters(name: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(NasProxyError, match=message):
        get_builder(name, **params)


def test_ipc_larger_than_a_class_is_refused(tiny_data: tuple[Split, Split]) -> None:
    train, _ = tiny_data
    with pytest.raises(NasProxyError, match="exceeds the 30 training images"):
        get_builder("random", ipc=31).build(train)


# ----------------------------------------------------------------------------- embedding cache


def _count_trainings(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[str]:
    """Wrap ``module.train_resumable`` so each whole-data training appends "train" to the returned list."""
    calls: list[str] = []
    real = module.train_resumable

    def counting(*args: object, **kwargs: object) -> embedding_module.TrainRun:
        calls.append("train")
        return real(*args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(module, "train_resumable", counting)
    return calls


def test_herding_and_kcenter_share_one_cached_embedding(
    tiny_data: tuple[Split, Split], monkeypatch: pytest.MonkeyPatch
) -> None:
    train, _ = tiny_data
    calls = _count_trainings(monkeypatch, embedding_module)
    settings = {"ipc": 2, "seed": 0, "embed_arch": SMALL, "embed_epochs": 1}
    a = get_builder("herding", **settings).build(train)
    b = get_builder("kcenter", **settings).build(train)
    assert calls == ["train"]
    assert len(list((cache_dir() / "embeddings").glob("*.npz"))) == 1
    assert a.manifest.extra["embedding_cached"] is False and b.manifest.extra["embedding_cached"] is True
    assert a.manifest.extra["embedding_key"] == b.manifest.extra["embedding_key"]
    # The first centre nearest the mean is herding's first pick too.
    assert a.manifest.indices is not None and b.manifest.indices is not None
    assert a.manifest.indices[::2] == b.manifest.indices[::2]
    get_builder("herding", **{**settings, "embed_epochs": 2}).build(train)
    assert calls == ["train", "train"]  # other settings, other key


def test_forgetting_counts_are_cached_across_ipc(
    tiny_data: tuple[Split, Split], monkeypatch: pytest.MonkeyPatch
) -> None:
    train, _ = tiny_data
    calls = _count_trainings(monkeypatch, coreset_module)
    one = Forgetting(ipc=1, seed=0, arch=SMALL, epochs=2).build(train)
    two = Forgetting(ipc=2, seed=0, arch=SMALL, epochs=2).build(train)
    assert calls == ["train"]
    assert one.manifest.extra["counts_cached"] is False and two.manifest.extra["counts_cached"] is True
    assert one.manifest.extra["never_learned"] == two.manifest.extra["never_learned"]
    # A cached build selects exactly what a fresh one does.
    monkeypatch.setenv("NAS_PROXY_CACHE", str(cache_dir() / "elsewhere"))
    fresh = Forgetting(ipc=2, seed=0, arch=SMALL, epochs=2).build(train)
    assert calls == ["train", "train"]
    assert fresh.manifest.content_hash == two.manifest.content_hash
    Forgetting(ipc=1, seed=1, arch=SMALL, epochs=2).build(train)
    assert calls == ["train", "train", "train"]  # another seed, another training


def test_damaged_embedding_cache_is_recomputed(tiny_data: tuple[Split, Split]) -> None:
    train, _ = tiny_data
    first = embedding_features(train, SMALL, 1, seed=0)
    assert not first.cached and first.train_seconds > 0
    assert embedding_features(train, SMALL, 1, seed=0).cached
    (path,) = (cache_dir() / "embeddings").glob("*.npz")
    path.write_bytes(path.read_bytes()[:100])
    again = embedding_features(train, SMALL, 1, seed=0)
    assert not again.cached and torch.equal(first.features, again.features)
    assert first.features.shape == (len(train), 8 * 16 * 16)


# ----------------------------------------------------------------------------- resumable training


class _Interrupt:
    """A forward hook that raises KeyboardInterrupt on the n-th forward pass."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0

    def __call__(self, *_: object) -> None:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt


def test_training_checkpoints_after_its_first_step(tiny_data: tuple[Split, Split], tmp_path: Path) -> None:
    # A kill -9 (here: an error, which saves nothing on its way out) in the first minute keeps step 1.
    train, _ = tiny_data
    ckpt = tmp_path / "run.ckpt"

    def die_at_step_3(idx: torch.Tensor, _logits: torch.Tensor) -> None:
        die_at_step_3.calls += 1  # type: ignore[attr-defined]
        if die_at_step_3.calls == 3:  # type: ignore[attr-defined]
            raise RuntimeError("killed")

    die_at_step_3.calls = 0  # type: ignore[attr-defined]
    model = build_model(SMALL, 1, 28, 10, seed=0)
    with pytest.raises(RuntimeError, match="killed"):
        train_resumable(model, train, TrainConfig(epochs=1, batch_size=64), 0, key="k", checkpoint=ckpt,
                        on_batch=die_at_step_3)
    assert int(torch.load(ckpt, weights_only=True)["step"]) == 1


@pytest.mark.parametrize("where", ["forward", "update"])
def test_interrupted_training_resumes_bit_for_bit(tiny_data: tuple[Split, Split], tmp_path: Path, where: str) -> None:
    train, _ = tiny_data
    cfg = TrainConfig(epochs=3, batch_size=64)  # 5 steps an epoch

    def fresh() -> torch.nn.Module:
        return build_model(SMALL, 1, 28, 10, seed=0)

    def counters() -> dict[str, torch.Tensor]:
        return {"seen": torch.zeros(len(train), dtype=torch.long)}

    def count(state: dict[str, torch.Tensor]) -> embedding_module.BatchHook:
        def hook(idx: torch.Tensor, _logits: torch.Tensor) -> None:
            state["seen"][idx] += 1

        return hook

    ref, ref_state = fresh(), counters()
    train_resumable(ref, train, cfg, seed=0, key="k", state=ref_state, on_batch=count(ref_state))

    ckpt = tmp_path / "run.ckpt"
    model, state = fresh(), counters()
    hook = count(state)
    if where == "forward":  # Ctrl-C during a forward pass of epoch 2: saved mid-epoch
        handle = model.register_forward_hook(_Interrupt(8))
        on_batch = hook
    else:  # Ctrl-C right after an optimizer step: the epoch-1 checkpoint is kept instead
        handle = None
        n = [0]

        def on_batch(idx: torch.Tensor, logits: torch.Tensor) -> None:
            hook(idx, logits)
            n[0] += 1
            if n[0] == 8:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_resumable(model, train, cfg, seed=0, key="k", checkpoint=ckpt, state=state, on_batch=on_batch)
    assert ckpt.exists()
    if handle is not None:
        handle.remove()
    model2, state2 = fresh(), counters()
    run = train_resumable(model2, train, cfg, seed=0, key="k", checkpoint=ckpt, state=state2, on_batch=count(state2))
    assert run.seconds_before > 0
    assert torch.equal(state2["seen"], ref_state["seen"])
    for p, q in zip(model2.state_dict().values(), ref.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(NasProxyError, match="checkpoint of another build"):
        train_resumable(fresh(), train, cfg, seed=0, key="other", checkpoint=ckpt)


def test_train_resumable_in_micro_batches_steps_as_train_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Micro-batches forced (5 images): the same pieces as train_model, whole-batch logits for on_batch."""
    import nas_proxy.microbatch as microbatch
    from nas_proxy.train import train_model

    monkeypatch.setattr(microbatch, "MICRO_BATCH_BYTES", 5 * 8 * 16 * 16 * 4)
    train, _ = make_synthetic(num_classes=4, train_per_class=10, test_per_class=1, size=16, seed=2)
    cfg = TrainConfig(epochs=2, batch_size=16)
    arch = "ConvNet-D2-W8-AR-IN-AP"
    ref = build_model(arch, 1, 16, 4, seed=0)
    train_model(ref, train, cfg, seed=0)
    model = build_model(arch, 1, 16, 4, seed=0)
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    seen: list[tuple[int, tuple[int, ...]]] = []

    def on_batch(idx: torch.Tensor, logits: torch.Tensor) -> None:
        seen.append((len(idx), tuple(logits.shape)))

    train_resumable(model, train, cfg, seed=0, key="k", on_batch=on_batch)
    assert max(sizes) == 5
    assert seen and all(shape == (n, 4) for n, shape in seen)
    for p, q in zip(model.state_dict().values(), ref.state_dict().values(), strict=True):
        assert torch.equal(p, q)
