"""Build a proxy set into a file: the job of ``nas-proxy build``, as a library call.

One build per output file (a lock beside it), resumable from the checkpoint beside it
(``<out>.ckpt``, removed once the proxy is saved), the file written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nas_proxy.data import Split, load_dataset
from nas_proxy.errors import NasProxyError
from nas_proxy.lock import check_free, exclusive
from nas_proxy.log import note, stage
from nas_proxy.proxies.artifact import ProxySet, load_proxy, save_proxy
from nas_proxy.proxies.base import ProxyBuilder


def default_proxy_path(dataset: str, method: str, ipc: int, seed: int) -> str:
    """``results/proxies/{dataset}-{method}-ipc{K}-s{seed}.npz`` (a dataset path contributes its stem)."""
    stem = Path(dataset).stem if ("/" in dataset or dataset.endswith(".npz")) else dataset
    return f"results/proxies/{stem}-{method}-ipc{ipc}-s{seed}.npz"


@dataclass(frozen=True)
class BuiltProxy:
    """A proxy set and the file it is in; ``reused``: the file was there already (``reuse=True``)."""

    proxy: ProxySet
    path: Path
    reused: bool = False


def build_proxy(
    builder: ProxyBuilder,
    data: str | Split,
    *,
    out: str | Path | None = None,
    data_root: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
    reuse: bool = False,
) -> BuiltProxy:
    """Build ``builder``'s proxy set from ``data`` (a dataset name or path, or a loaded Split) into ``out``.

    ``out`` defaults to :func:`default_proxy_path` (``.npz`` is added if missing). Another build of
    the same file raises :class:`nas_proxy.errors.InUseError` before any data is loaded; an
    interrupted build resumes from ``<out>.ckpt``. ``reuse``: a file already at ``out`` is loaded
    instead of built again (the demo resumes this way; ``nas-proxy build`` rebuilds).
    """
    dataset = data if isinstance(data, str) else data.dataset
    path = Path(out or default_proxy_path(dataset, builder.name, builder.ipc, builder.seed))
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    if reuse and path.exists():
        return BuiltProxy(load_proxy(path), path, reused=True)
    ckpt = path.with_suffix(".ckpt")
    # One build per output: two would resume from and overwrite one checkpoint.
    lock, what = path.with_name(path.name + ".lock"), f"proxy {path}"
    fix = "wait for that build or choose another --out"
    check_free(lock, what, fix)  # before minutes of loading data
    if isinstance(data, str):
        train, _ = load_dataset(data, root=data_root, device=device)
        where = f" ({train.origin})" if train.origin else ""
        stage(f"dataset {train.dataset}{where}: {len(train)} training images", enabled=progress)
    else:
        train = data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a parent that is a file
        raise NasProxyError(f"cannot create {path.parent} ({exc.strerror or exc}); choose another --out") from exc
    with exclusive(lock, what, fix):
        if ckpt.exists():
            note(f"resuming from {ckpt}")
        proxy = builder.build(train, progress=progress, checkpoint=ckpt)
        saved = save_proxy(proxy, path)
        ckpt.unlink(missing_ok=True)  # the proxy is safely on disk; the checkpoint has served
    return BuiltProxy(proxy, saved)
