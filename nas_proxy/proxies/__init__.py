"""Proxy builders: turn a real dataset into a small training set.

A registry of plain dicts, as torchvision/timm: ``list_builders()``, ``get_builder(name, **params)``.
``BUILDERS`` holds the built-in builders; installed plugins (entry-point group
``nas_proxy.builders``, see :mod:`nas_proxy.proxies.plugins`) join them on the registry's first use.
"""

from __future__ import annotations

import functools
import logging
import typing
from dataclasses import fields
from typing import Any

from nas_proxy.errors import NasProxyError, UnknownNameError
from nas_proxy.proxies.artifact import ProxyManifest, ProxySet, load_proxy, save_proxy
from nas_proxy.proxies.base import ProxyBuilder
from nas_proxy.proxies.build import BuiltProxy, build_proxy, default_proxy_path
from nas_proxy.proxies.coreset import Forgetting, Herding, KCenter, RandomSelection
from nas_proxy.proxies.matching import DC, DM, DSA
from nas_proxy.proxies.plugins import PluginProblem, Plugins, discover

# name -> builder class; each builder module's classes are imported above and listed here.
_BUILDER_CLASSES: tuple[type[ProxyBuilder], ...] = (RandomSelection, Herding, KCenter, Forgetting, DC, DSA, DM)
BUILDERS: dict[str, type[ProxyBuilder]] = {cls.name: cls for cls in _BUILDER_CLASSES}

_log = logging.getLogger("nas_proxy.plugins")


@functools.cache
def _plugins() -> Plugins:
    # Once per process, on first use: plugins are imported only when a builder is asked for.
    found = discover(BUILDERS)
    for problem in found.problems:
        # One line each; without logging configured, Python prints it bare on stderr.
        _log.warning("warning: %s", problem)
    return found


def reload_plugins() -> tuple[PluginProblem, ...]:
    """Discover the installed plugins again (after installing one in a running process); their problems."""
    _plugins.cache_clear()
    return _plugins().problems


def plugin_problems() -> tuple[PluginProblem, ...]:
    """The entry points that were skipped, each with its one-line reason."""
    return _plugins().problems


def builder_classes() -> dict[str, type[ProxyBuilder]]:
    """Every available builder by name: the built-ins (``BUILDERS``), then the installed plugins."""
    return {**BUILDERS, **_plugins().builders}


def list_builders() -> list[str]:
    return list(builder_classes())


def get_builder_class(name: str) -> type[ProxyBuilder]:
    """The builder class of a method name (a built-in or a plugin); unknown names raise listing the valid ones."""
    classes = builder_classes()
    if name not in classes:
        raise UnknownNameError("proxy method", name, classes)
    return classes[name]


def get_builder(name: str, **params: Any) -> ProxyBuilder:
    """A builder by name; unknown names or hyperparameters raise listing the valid ones."""
    cls = get_builder_class(name)
    unknown = sorted(set(params) - set(cls.param_names()))
    if unknown:
        valid = ", ".join(cls.param_names())
        raise NasProxyError(f"method {name!r} has no parameter {', '.join(unknown)}; valid: {valid}")
    return cls(**params)


def parse_params(name: str, assignments: list[str]) -> dict[str, Any]:
    """``["iterations=50", "init=real"]`` -> typed values, by the builder's field types."""
    cls = get_builder_class(name)
    hints = typing.get_type_hints(cls)
    valid = {f.name for f in fields(cls)}
    out: dict[str, Any] = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise NasProxyError(f"--set expects key=value, got {item!r}")
        if key not in valid:
            raise NasProxyError(f"method {name!r} has no parameter {key!r}; valid: {', '.join(sorted(valid))}")
        out[key] = _coerce(text.strip(), hints[key], key)
    return out


def _coerce(text: str, hint: Any, key: str) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if text.lower() == "none" and type(None) in typing.get_args(hint):
        return None
    target = args[0] if args and typing.get_origin(hint) is not typing.Literal else hint
    if typing.get_origin(hint) is typing.Literal:
        if text not in typing.get_args(hint):
            raise NasProxyError(f"{key} must be one of {', '.join(map(str, typing.get_args(hint)))}, got {text!r}")
        return text
    try:
        if target is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if target in (int, float, str):
            return target(text)
    except ValueError as exc:
        raise NasProxyError(f"{key} expects {target.__name__}, got {text!r}") from exc
    return text


__all__ = [
    "BUILDERS",
    "BuiltProxy",
    "ProxyBuilder",
    "ProxyManifest",
    "ProxySet",
    "build_proxy",
    "builder_classes",
    "default_proxy_path",
    "get_builder",
    "get_builder_class",
    "list_builders",
    "load_proxy",
    "parse_params",
    "plugin_problems",
    "reload_plugins",
    "save_proxy",
]
