"""Where tensors live: CUDA when present, else CPU; ``NAS_PROXY_DEVICE`` overrides."""

from __future__ import annotations

import os

import torch

from nas_proxy.errors import NasProxyError


def default_device() -> torch.device:
    """The device to compute on: ``$NAS_PROXY_DEVICE`` if set, else ``cuda`` if available, else CPU."""
    name = os.environ.get("NAS_PROXY_DEVICE")
    if name:
        return resolve_device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> :func:`default_device`; anything else is checked to exist."""
    if name is None or name == "auto":
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise NasProxyError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NasProxyError(f"device {name!r} requested but CUDA is not available; use cpu or auto")
    return device


# What a device is and what it can give: every "is this a CPU / a GPU" question of the package is
# asked here, so a new device type is taught in one place.


def _kind(device: torch.device | str) -> str:
    # A label too: a Dask cluster's workers may report "mixed" devices, which is neither.
    return device.type if isinstance(device, torch.device) else str(device).split(":")[0]


def on_cpu(device: torch.device | str) -> bool:
    """Whether tensors there live on the host CPU (micro-batches, the C kernels, one-thread workers)."""
    return _kind(device) == "cpu"


def on_cuda(device: torch.device | str) -> bool:
    """Whether ``device`` is a CUDA GPU (launch-bound: stack everything, bf16 autocast, CUDA graphs)."""
    return _kind(device) == "cuda"


def default_group_memory(device: torch.device | str) -> int:
    """Activation bytes a stacked group may take: a quarter of a GPU's memory, 2 GiB elsewhere."""
    if on_cuda(device):
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory // 4)
    return 2 << 30
