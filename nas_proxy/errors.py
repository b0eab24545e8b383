"""Errors that mean "the user asked for something that cannot be": the CLI turns them into exit 2.

Everything here subclasses ValueError, so library users can catch the usual type, while the
CLI catches only these (a bug elsewhere still shows a traceback instead of posing as bad input).
"""

from __future__ import annotations

from collections.abc import Iterable


class NasProxyError(ValueError):
    """Bad input: an unknown name, a malformed file, wrong shapes, an impossible option."""


class UnknownNameError(NasProxyError):
    """A name that is not in a registry or a search space."""

    def __init__(self, kind: str, name: object, valid: Iterable[object]) -> None:
        choices = ", ".join(str(v) for v in valid)
        super().__init__(f"unknown {kind} {name!r}; valid: {choices}")
        self.kind = kind
        self.name = name


class DataNotFoundError(NasProxyError, FileNotFoundError):
    """Data that is not on disk and could not be fetched."""


class InUseError(NasProxyError):
    """A run directory or output that another live process is writing (see :mod:`nas_proxy.lock`)."""


def one_line(text: str, limit: int = 500) -> str:
    """``text`` with every run of whitespace (newlines included) as one space, cut at ``limit``.

    The CLI's promise is one ``error:`` line; messages of other libraries (urlopen's, numpy's)
    embedded in ours may span several.
    """
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def check_positive_int(value: object, what: str) -> None:
    """Raise unless ``value`` is an int of at least 1 (a bool is not a count)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NasProxyError(f"{what} must be a positive integer, got {value!r}")


def check_positive(value: object, what: str) -> None:
    """Raise unless ``value`` is a number above 0 (a bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise NasProxyError(f"{what} must be positive, got {value!r}")
