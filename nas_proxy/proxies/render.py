"""A proxy set as a labelled image grid (one row per class), and its manifest as readable text."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from nas_proxy.errors import check_positive_int
from nas_proxy.proxies.artifact import ProxySet

# Class names of the named datasets (row labels of the grid); others show the class number.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashionmnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Boot",
    ),
    "svhn": tuple(str(i) for i in range(10)),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


def display_images(proxy: ProxySet) -> torch.Tensor:
    """Images back in pixel space (``x * std + mean``), clipped to [0, 1] for display only."""
    m = proxy.manifest
    mean = torch.tensor(m.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(m.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (proxy.images.float().cpu() * std + mean).clamp(0.0, 1.0)


def save_grid(proxy: ProxySet, path: str | Path, per_class: int | None = None, dpi: int = 100) -> Path:
    """Write a PNG grid: one row per class (labelled), ``per_class`` images of it (default: all)."""
    m = proxy.manifest
    cols = m.ipc if per_class is None else per_class
    check_positive_int(cols, "per-class")
    cols = min(cols, m.ipc)
    images = display_images(proxy)
    names = CLASS_NAMES.get(m.dataset, ())
    rows = m.num_classes
    # Fixed margins in inches (class names on the left, title on top); cells 0.8 in square.
    cell, left, top = 0.8, 1.1, 0.4
    width, height = left + cols * cell + 0.1, top + rows * cell + 0.1
    # A bare Figure (no pyplot): files only, never a display, and the process's backend untouched.
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(
        left=left / width, right=1 - 0.1 / width, top=1 - top / height, bottom=0.1 / height, wspace=0.05, hspace=0.05
    )
    for c in range(rows):
        members = torch.nonzero(proxy.labels == c).flatten()[:cols]
        for j in range(cols):
            ax = axes[c][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(members):
                img = images[int(members[j])]
                if img.shape[0] == 1:
                    ax.imshow(img[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
                else:
                    ax.imshow(img.permute(1, 2, 0).numpy())
        label = names[c] if c < len(names) else str(c)
        axes[c][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"{m.method} · {m.dataset} · ipc {m.ipc} · seed {m.seed}", fontsize=9, y=1 - 0.12 / height)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def format_manifest(proxy: ProxySet, max_indices: int = 20) -> str:
    """The manifest as aligned ``key: value`` lines; long index lists are shortened."""
    m = proxy.manifest
    lines = [f"{'id:':<17} {proxy.id}"]
    for key, value in sorted(_fields(proxy).items()):
        if key in ("params", "extra", "origin"):
            if value is None:
                continue  # no origin: built here
            lines.append(f"{key + ':':<17} {{}}" if not value else f"{key}:")
            lines += [f"  {k + ':':<15} {v}" for k, v in sorted(value.items())]
            continue
        if key == "indices" and value is not None and len(value) > max_indices:
            value = f"{', '.join(map(str, value[:max_indices]))}, ... ({len(value)} rows)"
        lines.append(f"{key + ':':<17} {value}")
    lines.append(f"{'shape:':<17} {tuple(proxy.images.shape)} ({m.ipc} per class x {m.num_classes} classes)")
    return "\n".join(lines)


def _fields(proxy: ProxySet) -> dict[str, Any]:
    return asdict(proxy.manifest)
