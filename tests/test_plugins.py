"""Builder plugins: a test distribution on sys.path registers builders through ``nas_proxy.builders``.

The distribution is written here as a real installed package would look on disk (a module plus
``<name>.dist-info/`` with ``METADATA`` and ``entry_points.txt``), so the test runs on a fresh clone.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import nas_proxy
from nas_proxy.cli import main
from nas_proxy.errors import UnknownNameError
from nas_proxy.proxies import (
    BUILDERS,
    get_builder,
    get_builder_class,
    list_builders,
    load_proxy,
    plugin_problems,
    reload_plugins,
)
from nas_proxy.proxies.contract import check_builder, contract_data
from nas_proxy.proxies.plugins import plugin_names

PLUGIN_MODULE = '''
"""A third-party builder: the first ipc training images of each class, every ``stride``-th."""
from dataclasses import dataclass

import torch

from nas_proxy.proxies.base import BuildContext, BuildResult, ProxyBuilder


@dataclass(frozen=True)
class FirstImages(ProxyBuilder):
    name = "first"
    stride: int = 1

    def _build(self, train, ctx: BuildContext) -> BuildResult:
        rows = torch.cat([train.indices_of_class(c)[: self.ipc * self.stride : self.stride]
                          for c in range(train.num_classes)])
        return BuildResult(train.images[rows], train.labels[rows], indices=rows)


@dataclass(frozen=True)
class Unfinished(ProxyBuilder):
    name = "unfinished"  # no _build: abstract


def helper():
    return 1
'''

# name -> entry-point target; every one but "first" is broken in its own way.
ENTRY_POINTS = {
    "nas_proxy_example": {"first": "nas_proxy_example:FirstImages"},
    "nas_proxy_broken": {
        "missing": "nas_proxy_missing_module:Builder",
        "helper": "nas_proxy_example:helper",
        "dc": "nas_proxy_example:FirstImages",
        "other": "nas_proxy_example:FirstImages",
        "unfinished": "nas_proxy_example:Unfinished",
    },
}
BROKEN = {
    "missing": "cannot be loaded (ModuleNotFoundError: No module named 'nas_proxy_missing_module')",
    "helper": "is not a ProxyBuilder subclass",
    "dc": "the name of a built-in builder (DC)",
    "other": "FirstImages.name is 'first', not the entry point's name 'other'",
    "unfinished": "Unfinished is abstract (it must implement _build)",
}


def write_site(root: Path) -> Path:
    """A folder laid out like site-packages holding the two test distributions."""
    site = root / "site"
    site.mkdir()
    (site / "nas_proxy_example.py").write_text(PLUGIN_MODULE)
    for dist, eps in ENTRY_POINTS.items():
        info = site / f"{dist}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: 0.1\n")
        lines = "".join(f"{name} = {target}\n" for name, target in eps.items())
        (info / "entry_points.txt").write_text(f"[nas_proxy.builders]\n{lines}")
    return site


@pytest.fixture
def plugin_site(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Path]:
    """The test distributions installed (on sys.path) for one test; the registry rediscovered around it."""
    site = write_site(tmp_path)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    caplog.set_level(logging.WARNING, logger="nas_proxy.plugins")
    reload_plugins()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("nas_proxy_example", None)
        importlib.invalidate_caches()
        reload_plugins()


def test_a_plugin_is_listed_after_the_built_ins_and_builds(plugin_site: Path) -> None:
    assert list_builders() == [*BUILDERS, "first"]
    assert get_builder_class("first").__module__ == "nas_proxy_example"
    train = contract_data()[0]
    proxy = get_builder("first", ipc=2, stride=2).build(train)
    assert proxy.manifest.method == "first" and proxy.manifest.params == {"ipc": 2, "seed": 0, "stride": 2}
    assert proxy.manifest.indices == (0, 2, 20, 22, 40, 42, 60, 62)  # rows 0, 2 of each 20-image class


def test_a_plugin_passes_the_contract_checks_plugin_authors_run(plugin_site: Path) -> None:
    proxy = check_builder("first", stride=3)
    assert proxy.manifest.method == "first" and len(proxy) == 2 * 4


def test_a_contract_breach_is_named(plugin_site: Path) -> None:
    from nas_proxy.proxies import ProxySet, contract

    builder = get_builder("first", ipc=2)
    train = contract_data()[0]
    proxy = builder.build(train)
    reversed_rows = ProxySet(proxy.images.flip(0), proxy.labels.flip(0), proxy.manifest)  # classes 3, 2, 1, 0
    with pytest.raises(AssertionError, match="first: labels must be 2 of each class, classes in order"):
        contract.check_layout(reversed_rows, builder, train)


def test_broken_plugins_are_skipped_with_one_line_each(plugin_site: Path, caplog: pytest.LogCaptureFixture) -> None:
    problems = {p.name: p for p in plugin_problems()}
    assert set(problems) == set(BROKEN)
    for name, reason in BROKEN.items():
        line = str(problems[name])
        assert "\n" not in line and line.startswith(f"builder plugin {name!r} (")
        assert "from nas-proxy-broken 0.1) skipped: " in line and reason in line, line
    logged = [r.getMessage() for r in caplog.get_records("setup") if r.name == "nas_proxy.plugins"]
    assert sorted(logged) == sorted(f"warning: {p}" for p in problems.values())
    # The built-ins are untouched: "dc" is still ours, and a built-in builds.
    assert get_builder_class("dc") is BUILDERS["dc"]
    assert len(get_builder("random", ipc=1).build(contract_data()[0])) == 4
    # Metadata lists every declared name, broken or not, without importing anything.
    assert set(plugin_names()) == {"first", *BROKEN}


def test_cli_build_lists_and_builds_a_plugin(
    plugin_site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "first.npz"
    code = main(["build", "--method", "first", "--dataset", "synthetic", "--ipc", "2", "--set", "stride=2",
                 "--out", str(out), "--no-progress"])
    text, err = capsys.readouterr()
    assert code == 0, err
    assert "method:   first (ipc=2, seed=0, stride=2)" in text
    assert load_proxy(out).manifest.method == "first"
    code = main(["build", "--method", "nope", "--dataset", "synthetic", "--out", str(tmp_path / "x.npz")])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: unknown proxy method 'nope'; valid: random, herding")
    assert err.rstrip().endswith(", dm, first")
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    assert "first" in " ".join(capsys.readouterr()[0].split())


def test_unknown_method_error_lists_the_built_ins_without_plugins() -> None:
    with pytest.raises(UnknownNameError, match=r"valid: random, herding, kcenter, forgetting, dc, dsa, dm$"):
        get_builder("first")


def test_a_fresh_process_reports_each_broken_plugin_in_one_line_and_still_builds(tmp_path: Path) -> None:
    site = write_site(tmp_path)
    repo = Path(nas_proxy.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(repo)]), "NAS_PROXY_CACHE": str(tmp_path)}
    out = tmp_path / "r.npz"
    argv = ["build", "--method", "random", "--dataset", "synthetic", "--ipc", "1", "--out", str(out), "--no-progress"]
    done = subprocess.run([sys.executable, "-m", "nas_proxy.cli", *argv], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert sorted(line.split("'")[1] for line in lines) == sorted(BROKEN), done.stderr
    assert all(line.startswith("warning: builder plugin '") for line in lines)
    assert load_proxy(out).manifest.method == "random"
