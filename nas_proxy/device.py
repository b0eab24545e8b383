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
