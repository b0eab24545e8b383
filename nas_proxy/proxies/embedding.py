"""Whole-data training that survives Ctrl-C, and the cached embedding features of a trained ConvNet.

Herding and k-center select in the feature space of a ConvNet trained on the whole training set
(REFERENCE.md section 4; the extractor's details are UNCONFIRMED in the paper). Training it is
the expensive part, so the features are cached on disk under ``cache_dir()/embeddings``, keyed by
everything that determines them: the training set's content, the architecture, the epochs, the
seed and the training protocol. Herding and k-center with the same settings train it once;
forgetting caches its counts the same way (:func:`load_cached` / :func:`save_cached`), so ipc 1
and ipc 10 share one training.

:func:`train_resumable` is the one training loop both this module and forgetting use: the
reference protocol (``TrainConfig``), a per-batch hook, a tqdm bar (log lines outside a
terminal), and a checkpoint written after the first step, then every epoch, every minute and on
Ctrl-C, from which a rerun continues bit-for-bit.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas_proxy.data import Split, cache_dir
from nas_proxy.errors import NasProxyError
from nas_proxy.log import progress_bar
from nas_proxy.microbatch import cross_entropy_backward, training_micro_batch
from nas_proxy.models import build_model
from nas_proxy.proxies.artifact import content_hash
from nas_proxy.space import ArchSpec
from nas_proxy.store import save_torch_atomic
from nas_proxy.train import TrainConfig

# (batch indices into the training set, detached logits of that batch before the update)
BatchHook = Callable[[torch.Tensor, torch.Tensor], None]

CHECKPOINT_EVERY_S = 60.0


@dataclass(frozen=True)
class TrainRun:
    """Seconds of a (possibly resumed) training: in all sessions, and before this one."""

    seconds: float
    seconds_before: float


def split_hash(split: Split) -> str:
    """SHA-256 of a split's images and labels: the cache key of anything trained on it."""
    return content_hash(split.images, split.labels)


def train_resumable(
    model: nn.Module,
    train: Split,
    config: TrainConfig,
    seed: int,
    *,
    key: str,
    checkpoint: Path | None = None,
    state: dict[str, torch.Tensor] | None = None,
    on_batch: BatchHook | None = None,
    progress: bool = False,
    desc: str = "train",
) -> TrainRun:
    """Train ``model`` in place with the reference protocol, resuming from ``checkpoint`` if present.

    Same steps, batch order and learning-rate schedule as :func:`nas_proxy.train.train_model`.
    ``state`` holds tensors that ``on_batch`` updates in place (e.g. forgetting counters); they
    are saved in the checkpoint with the model, optimizer and batch-order generator. ``key``
    names the run: a checkpoint written under another key is refused rather than overwritten.
    """
    state = state if state is not None else {}
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    n = len(train)
    total = config.total_steps(n)
    g = torch.Generator().manual_seed(seed)
    step, epoch, pos, seconds_before = 0, 0, 0, 0.0
    if checkpoint is not None and checkpoint.exists():
        try:
            ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged file
            raise NasProxyError(f"{checkpoint}: unreadable checkpoint ({exc}); delete it to start over") from exc
        if ck.get("key") != key:
            raise NasProxyError(f"{checkpoint}: checkpoint of another build; delete it or choose another output path")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        g.set_state(ck["gen"])
        for name, value in ck["state"].items():
            state[name].copy_(value)
        step, epoch, pos, seconds_before = int(ck["step"]), int(ck["epoch"]), int(ck["pos"]), float(ck["seconds"])

    start = time.perf_counter()
    gen_at_epoch = g.get_state()

    def save() -> None:
        if checkpoint is None:
            return
        blob = {
            "key": key,
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "gen": gen_at_epoch,  # state before this epoch's permutation: the resume redraws it
            "state": {k: v.detach().cpu() for k, v in state.items()},
            "step": step,
            "epoch": epoch,
            "pos": pos,
            "seconds": seconds_before + time.perf_counter() - start,
        }
        save_torch_atomic(blob, checkpoint)

    bar = progress_bar(total, desc, "step", enabled=progress, initial=step, leave=False)
    last_save = time.perf_counter()
    first_step = step + 1  # saved at once: a kill -9 in the first minute must not lose it all
    loss = torch.zeros(())
    # True from the optimizer step until the counters catch up: a Ctrl-C landing there would
    # save weights one step ahead of the counters, so that one keeps the previous checkpoint.
    mutating = False
    pieces: list[torch.Tensor] = []  # a step's logits, one micro-batch at a time (for on_batch)

    def forward(part: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = model(part)
        pieces.append(out.detach())
        return out

    model.train()
    try:
        while step < total:
            gen_at_epoch = g.get_state()
            order = torch.randperm(n, generator=g).to(train.device)
            while pos < n and step < total:
                for group in opt.param_groups:
                    group["lr"] = config.lr_at(step, total)
                idx = order[pos : pos + config.batch_size]
                x = train.images[idx]
                pieces.clear()
                opt.zero_grad(set_to_none=True)
                # Micro-batches on a CPU, as train_model: the same steps up to float rounding.
                loss = cross_entropy_backward(forward, x, train.labels[idx], training_micro_batch(model, x))
                logits = torch.cat(pieces)
                mutating = True
                opt.step()
                if on_batch is not None:
                    on_batch(idx, logits.detach())
                step += 1
                pos += config.batch_size
                mutating = False
                bar.update(1)
                if progress and step % 20 == 0:
                    bar.set_postfix(loss=f"{float(loss.detach()):.3f}", epoch=epoch + 1)
                if step == first_step or time.perf_counter() - last_save > CHECKPOINT_EVERY_S:
                    save()
                    last_save = time.perf_counter()
            if not bool(torch.isfinite(loss)):
                raise NasProxyError(f"{desc}: training diverged (non-finite loss) at epoch {epoch + 1}")
            epoch, pos = epoch + 1, 0
            gen_at_epoch = g.get_state()
            save()
    except KeyboardInterrupt:
        if not mutating:
            save()  # keep every finished step; rerunning the same command resumes here
        raise
    finally:
        bar.close()
    return TrainRun(seconds_before + time.perf_counter() - start, seconds_before)


@torch.no_grad()
def embed_split(model: nn.Module, split: Split, batch_size: int = 1024) -> torch.Tensor:
    """``model.embed`` of every image (eval mode), as a float32 CPU tensor (N, D)."""
    model.eval()
    embed: Callable[[torch.Tensor], torch.Tensor] = model.embed  # type: ignore[assignment]
    parts = [embed(split.images[i : i + batch_size]).float().cpu() for i in range(0, len(split), batch_size)]
    return torch.cat(parts)


@dataclass(frozen=True)
class Embedding:
    """Features of every training image, the cache key, and whether this call trained the net."""

    features: torch.Tensor
    key: str
    cached: bool
    train_seconds: float  # of the extractor's training (all sessions); 0 when read from the cache


def run_key(train: Split, arch: str, epochs: int, seed: int, config: TrainConfig, kind: str = "features") -> str:
    """Cache key of what a whole-data training yields: the data, the net, its training, and ``kind``."""
    blob: dict[str, Any] = {
        "dataset": train.dataset,
        "data": split_hash(train),
        "arch": ArchSpec.from_id(arch).id,
        "epochs": epochs,
        "seed": seed,
        "config": config.hash,
    }
    if kind != "features":  # features were cached before kinds existed: their keys stay valid
        blob["kind"] = kind
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:24]


def embedding_key(train: Split, arch: str, epochs: int, seed: int, config: TrainConfig) -> str:
    """Cache key: everything that determines the trained extractor's features."""
    return run_key(train, arch, epochs, seed, config)


def load_cached(folder: str, key: str, rows: int) -> dict[str, torch.Tensor] | None:
    """Per-example arrays cached under ``cache_dir()/folder/key.npz``, or None.

    Every array must have ``rows`` rows; a damaged or mismatched entry is deleted (and so
    recomputed), never trusted.
    """
    path = cache_dir() / folder / f"{key}.npz"
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as blob:
            arrays = {name: torch.from_numpy(blob[name].copy()) for name in blob.files}
        if arrays and all(a.ndim >= 1 and a.shape[0] == rows for a in arrays.values()):
            return arrays
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        pass
    path.unlink(missing_ok=True)
    return None


def save_cached(folder: str, key: str, arrays: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``arrays`` atomically to ``cache_dir()/folder/key.npz`` with a readable ``key.json`` beside."""
    where = cache_dir() / folder
    where.mkdir(parents=True, exist_ok=True)
    tmp = where / f"{key}.tmp.npz"
    blobs: dict[str, Any] = {name: a.detach().cpu().numpy() for name, a in arrays.items()}
    np.savez(tmp, **blobs)
    tmp.replace(where / f"{key}.npz")
    (where / f"{key}.json").write_text(json.dumps(meta, sort_keys=True))


def embedding_features(
    train: Split,
    arch: str,
    epochs: int,
    seed: int,
    *,
    progress: bool = False,
    cache: bool = True,
) -> Embedding:
    """Features (N, D) of every training image from ``arch`` trained on all of ``train``.

    Training follows the reference protocol for ``epochs`` epochs with weights and batch order
    from ``seed``. Cached on disk (``cache=False`` recomputes without touching the cache); a
    damaged cache entry is recomputed, never trusted. An interrupted training resumes from
    ``<key>.ckpt`` in the cache folder.
    """
    config = TrainConfig(epochs=epochs)
    key = embedding_key(train, arch, epochs, seed, config)
    hit = load_cached("embeddings", key, len(train)) if cache else None
    if hit is not None and hit.get("features", torch.empty(0)).dtype == torch.float32:
        return Embedding(hit["features"], key, cached=True, train_seconds=0.0)
    model = build_model(arch, train.in_channels, train.image_size, train.num_classes, seed=seed).to(train.device)
    ckpt = cache_dir() / "embeddings" / f"{key}.ckpt" if cache else None
    run = train_resumable(model, train, config, seed, key=key, checkpoint=ckpt, progress=progress, desc=f"embed {arch}")
    feats = embed_split(model, train)
    if cache:
        meta = {"dataset": train.dataset, "images": len(train), "arch": arch, "epochs": epochs, "seed": seed}
        save_cached("embeddings", key, {"features": feats}, meta)
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)
    return Embedding(feats, key, cached=False, train_seconds=run.seconds)
