"""build_proxy: the library call behind `nas-proxy build` and the demo's proxies."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas_proxy import build_proxy
from nas_proxy.data import make_synthetic
from nas_proxy.errors import InUseError
from nas_proxy.lock import exclusive
from nas_proxy.proxies import get_builder, load_proxy


def test_build_proxy_from_a_name_and_from_a_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    builder = get_builder("random", ipc=2, seed=0)
    built = build_proxy(builder, "synthetic", progress=False)
    assert built.path == Path("results/proxies/synthetic-random-ipc2-s0.npz") and not built.reused
    assert load_proxy(built.path).manifest.content_hash == built.proxy.manifest.content_hash
    assert not built.path.with_suffix(".ckpt").exists()
    train, _ = make_synthetic()
    again = build_proxy(builder, train, out=tmp_path / "p", progress=False)
    assert again.path == tmp_path / "p.npz"
    assert again.proxy.manifest.content_hash == built.proxy.manifest.content_hash
    assert build_proxy(builder, train, out=again.path, reuse=True).reused


def test_a_second_build_of_one_file_is_refused_before_loading_data(tmp_path: Path) -> None:
    out = tmp_path / "p.npz"
    with exclusive(out.with_name(out.name + ".lock"), "proxy", "wait"), pytest.raises(InUseError):
        build_proxy(get_builder("random", ipc=2, seed=0), "no-such-dataset", out=out)
