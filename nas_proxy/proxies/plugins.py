"""Builder plugins: third-party builders registered through the entry-point group ``nas_proxy.builders``.

A package joins the registry by declaring, in its ``pyproject.toml``::

    [project.entry-points."nas_proxy.builders"]
    mine = "my_package.builders:MyBuilder"

The entry point's name is the method name (``nas-proxy build --method mine``); the object it names
is a frozen-dataclass subclass of :class:`~nas_proxy.proxies.base.ProxyBuilder` whose ``name`` is
that same name. Discovery imports nothing until the registry is first used, and a plugin that
fails to import or breaks these rules is skipped with a one-line reason (a :class:`PluginProblem`),
so one broken package never takes the built-in builders down with it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from nas_proxy.proxies.base import ProxyBuilder

GROUP = "nas_proxy.builders"


@dataclass(frozen=True)
class PluginProblem:
    """Why one entry point was skipped; ``str()`` is the one line shown to the user."""

    name: str
    target: str  # "module:attribute", as the entry point declares it
    dist: str  # the distribution that declares it ("name version")
    reason: str

    def __str__(self) -> str:
        return f"builder plugin {self.name!r} ({self.target}, from {self.dist}) skipped: {self.reason}"


@dataclass(frozen=True)
class Plugins:
    """What discovery found: usable builder classes by name, and the skipped entry points."""

    builders: Mapping[str, type[ProxyBuilder]]
    problems: tuple[PluginProblem, ...]


def _entry_points(group: str) -> list[EntryPoint]:
    try:
        return sorted(entry_points(group=group), key=lambda ep: ep.name)
    except Exception:  # a damaged metadata file of some unrelated package must not stop the tool
        return []


def plugin_names(group: str = GROUP) -> list[str]:
    """Method names that installed plugins declare, read from package metadata without importing them."""
    return [ep.name for ep in _entry_points(group)]


def _dist_label(ep: EntryPoint) -> str:
    dist = ep.dist
    return "an unknown distribution" if dist is None else f"{dist.name} {dist.version}"


def builder_class_problem(obj: Any, name: str) -> str | None:
    """Why ``obj`` cannot be the builder registered as ``name`` (None when it can).

    (Frozenness needs no check here: a dataclass cannot inherit from the frozen ProxyBuilder
    without being frozen itself; :func:`nas_proxy.proxies.contract.check_value` tests it anyway.)
    """
    if not (inspect.isclass(obj) and issubclass(obj, ProxyBuilder)):
        return f"{getattr(obj, '__qualname__', type(obj).__name__)} is not a ProxyBuilder subclass"
    if inspect.isabstract(obj):
        return f"{obj.__name__} is abstract (it must implement _build)"
    declared = getattr(obj, "name", None)
    if declared != name:
        return f"{obj.__name__}.name is {declared!r}, not the entry point's name {name!r}"
    return None


def discover(builtin: Mapping[str, type[ProxyBuilder]], group: str = GROUP) -> Plugins:
    """Import every entry point of ``group``; keep the builders that keep the rules, explain the rest.

    Built-in names win over a plugin that claims them, and the first plugin (by distribution
    order) wins over a later one of the same name: a name never silently changes meaning.
    """
    found: dict[str, type[ProxyBuilder]] = {}
    problems: list[PluginProblem] = []
    for ep in _entry_points(group):

        def skip(reason: str, ep: EntryPoint = ep) -> None:
            problems.append(PluginProblem(ep.name, ep.value, _dist_label(ep), reason))

        if ep.name in builtin:
            skip(f"the name of a built-in builder ({builtin[ep.name].__name__})")
            continue
        try:
            obj = ep.load()
        except (Exception, SystemExit) as exc:  # anything a broken package raises on import, exit() included
            skip(f"cannot be loaded ({type(exc).__name__}: {' '.join(str(exc).split())})")
            continue
        reason = builder_class_problem(obj, ep.name)
        if reason is not None:
            skip(reason)
        elif ep.name in found and found[ep.name] is not obj:
            skip(f"the name is already taken by {found[ep.name].__module__}.{found[ep.name].__qualname__}")
        else:
            found[ep.name] = obj
    return Plugins(found, tuple(problems))
