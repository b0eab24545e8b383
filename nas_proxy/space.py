"""Architectures as values (ArchSpec) and search spaces as data (SearchSpace).

The id string is the key everywhere (results rows, CLI filters, Optuna attributes, plots), so
it must round-trip: ``ArchSpec.from_id(spec.id) == spec``.
"""

from __future__ import annotations

import fnmatch
import itertools
import random
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from nas_proxy.errors import NasProxyError, UnknownNameError, one_line

FAMILY = "ConvNet"

# Id tokens of the authors' code (REFERENCE.md section 1).
ACT_TOKENS: dict[str, str] = {"sigmoid": "AS", "relu": "AR", "leakyrelu": "AL"}
NORM_TOKENS: dict[str, str] = {
    "none": "NN",
    "batchnorm": "BN",
    "layernorm": "LN",
    "instancenorm": "IN",
    "groupnorm": "GN",
}
POOL_TOKENS: dict[str, str] = {"none": "NP", "maxpool": "MP", "avgpool": "AP"}
AXES: tuple[str, ...] = ("depth", "width", "act", "norm", "pool")


def _inverse(table: dict[str, str]) -> dict[str, str]:
    return {token: name for name, token in table.items()}


_ACT_NAMES, _NORM_NAMES, _POOL_NAMES = map(_inverse, (ACT_TOKENS, NORM_TOKENS, POOL_TOKENS))


@dataclass(frozen=True, order=True)
class ArchSpec:
    """One ConvNet: ``depth`` blocks of conv(width) -> norm -> act -> pool, then a linear head."""

    depth: int = 3
    width: int = 128
    act: str = "relu"
    norm: str = "instancenorm"
    pool: str = "avgpool"

    def __post_init__(self) -> None:
        for axis, number in (("depth", self.depth), ("width", self.width)):
            if not isinstance(number, int) or isinstance(number, bool) or number < 1:
                raise NasProxyError(f"{axis} must be a positive integer, got {number!r}")
        for axis, name, table in (
            ("act", self.act, ACT_TOKENS),
            ("norm", self.norm, NORM_TOKENS),
            ("pool", self.pool, POOL_TOKENS),
        ):
            if name not in table:
                raise UnknownNameError(axis, name, table)
        if self.norm == "groupnorm" and self.width % 4:
            raise NasProxyError(f"groupnorm uses 4 groups: width must be a multiple of 4, got {self.width}")

    @property
    def id(self) -> str:
        """``ConvNet-D3-W128-AR-IN-AP``: the authors' tokens joined by dashes."""
        return (
            f"{FAMILY}-D{self.depth}-W{self.width}-{ACT_TOKENS[self.act]}"
            f"-{NORM_TOKENS[self.norm]}-{POOL_TOKENS[self.pool]}"
        )

    @classmethod
    def from_id(cls, arch_id: str) -> ArchSpec:
        """Parse an id made by :attr:`id`; a malformed id raises naming the bad token."""
        parts = arch_id.strip().split("-")
        tokens = ">-<".join("|".join(names) for names in (_ACT_NAMES, _NORM_NAMES, _POOL_NAMES))
        form = f"{FAMILY}-D<depth>-W<width>-<{tokens}>"
        if len(parts) != 6 or parts[0] != FAMILY:
            raise NasProxyError(f"malformed architecture id {arch_id!r}; expected {form}")
        _, d, w, a, n, p = parts
        if not (d[:1] == "D" and d[1:].isdigit()):
            raise NasProxyError(f"bad depth token {d!r} in {arch_id!r}; expected D<integer>, e.g. D3")
        if not (w[:1] == "W" and w[1:].isdigit()):
            raise NasProxyError(f"bad width token {w!r} in {arch_id!r}; expected W<integer>, e.g. W128")
        for kind, token, names in (("activation", a, _ACT_NAMES), ("norm", n, _NORM_NAMES), ("pool", p, _POOL_NAMES)):
            if token not in names:
                raise UnknownNameError(f"{kind} token in {arch_id!r}:", token, names)
        return cls(int(d[1:]), int(w[1:]), _ACT_NAMES[a], _NORM_NAMES[n], _POOL_NAMES[p])

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __str__(self) -> str:
        return self.id


DEFAULT_ARCH = ArchSpec()


@dataclass(frozen=True)
class SearchSpace:
    """A grid of ArchSpecs: the product of ``axes`` in the order given (the canonical order)."""

    name: str
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    description: str = ""

    def __post_init__(self) -> None:
        names = [axis for axis, _ in self.axes]
        if sorted(names) != sorted(AXES):
            raise NasProxyError(f"space {self.name!r} must define the axes {', '.join(AXES)}; got {', '.join(names)}")
        for axis, values in self.axes:
            if not values:
                raise NasProxyError(f"space {self.name!r}: axis {axis!r} has no values")
            if len(set(values)) != len(values):
                raise NasProxyError(f"space {self.name!r}: axis {axis!r} repeats a value: {list(values)}")
        # Validates every value (unknown names, bad widths) once, up front.
        object.__setattr__(self, "_specs", tuple(self._enumerate()))
        object.__setattr__(self, "_index", {s: i for i, s in enumerate(self._specs)})

    _specs: tuple[ArchSpec, ...] = field(init=False, repr=False, compare=False)
    _index: dict[ArchSpec, int] = field(init=False, repr=False, compare=False)

    def _enumerate(self) -> Iterator[ArchSpec]:
        names = [axis for axis, _ in self.axes]
        for combo in itertools.product(*(values for _, values in self.axes)):
            yield ArchSpec(**dict(zip(names, combo, strict=True)))

    @property
    def specs(self) -> tuple[ArchSpec, ...]:
        return self._specs

    def axis_values(self, axis: str) -> tuple[Any, ...]:
        for name, values in self.axes:
            if name == axis:
                return values
        raise UnknownNameError("axis", axis, AXES)

    def __len__(self) -> int:
        return len(self.specs)

    def __iter__(self) -> Iterator[ArchSpec]:
        return iter(self.specs)

    def __getitem__(self, index: int) -> ArchSpec:
        return self.specs[index]

    def __contains__(self, spec: object) -> bool:
        return spec in self._index

    def index(self, spec: ArchSpec | str) -> int:
        """Canonical position of ``spec`` (or an id); outside the space raises naming the axis."""
        spec = self.get(spec)
        return self._index[spec]

    def get(self, spec: ArchSpec | str) -> ArchSpec:
        """The spec for an id, checked to be in this space (the error names the bad axis value)."""
        if isinstance(spec, str):
            spec = ArchSpec.from_id(spec)
        if spec not in self:
            for axis, values in self.axes:
                if getattr(spec, axis) not in values:
                    raise NasProxyError(
                        f"{spec.id} is not in space {self.name!r}: {axis} {getattr(spec, axis)!r} "
                        f"is not one of {', '.join(map(str, values))}"
                    )
        return spec

    def filter(self, pattern: str) -> list[ArchSpec]:
        """Specs whose id matches a shell glob such as ``ConvNet-D3-*-BN-*`` (canonical order)."""
        return [s for s in self.specs if fnmatch.fnmatchcase(s.id, pattern)]

    def sample(self, n: int, seed: int) -> list[ArchSpec]:
        """``n`` distinct specs, stratified: each axis's values appear as evenly as ``n`` allows.

        Every axis column is a balanced cycle of its values, shuffled on its own (a Latin-hypercube
        style design), so with ``n`` at least the largest axis every value of every axis appears.
        Returned in canonical order; the same ``(n, seed)`` always gives the same list.
        """
        if not 1 <= n <= len(self):
            raise NasProxyError(f"sample size must be between 1 and {len(self)} for space {self.name!r}, got {n}")
        rng = random.Random(seed)
        names = [axis for axis, _ in self.axes]
        best: list[ArchSpec] = []
        for _ in range(200):
            columns = []
            for _, values in self.axes:
                col = [values[i % len(values)] for i in range(n)]
                rng.shuffle(col)
                columns.append(col)
            rows = {ArchSpec(**dict(zip(names, row, strict=True))) for row in zip(*columns, strict=True)}
            if len(rows) > len(best):
                best = list(rows)
            if len(best) == n:
                break
        # Dense samples rarely come out distinct: top up with unused specs (still seeded).
        chosen = set(best)
        rest = [s for s in self.specs if s not in chosen]
        rng.shuffle(rest)
        chosen.update(rest[: n - len(chosen)])
        return sorted(chosen, key=self.index)

    def select(self, *, sample: int | None = None, seed: int = 0, pattern: str | None = None) -> list[ArchSpec]:
        """The CLI's selection: optional glob filter first, then an optional stratified sample."""
        specs = self.filter(pattern) if pattern else list(self.specs)
        if pattern and not specs:
            raise NasProxyError(f"filter {pattern!r} matches no architecture in space {self.name!r}")
        if sample is None:
            return specs
        if pattern:
            # A filtered grid is no longer a product of axes: sample it plainly.
            if not 1 <= sample <= len(specs):
                raise NasProxyError(f"sample size must be between 1 and {len(specs)} after the filter, got {sample}")
            picked = random.Random(seed).sample(specs, sample)
            return sorted(picked, key=self.index)
        return self.sample(sample, seed)


def _spaces_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent
    # Wheels carry the spaces inside the package; a source checkout keeps them at the top level.
    return [p for p in (here / "search_spaces", here.parent / "search_spaces") if p.is_dir()]


def list_spaces() -> list[str]:
    """Names of the spaces shipped with the package."""
    return sorted({p.stem for d in _spaces_dirs() for p in d.glob("*.toml")})


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Load a space by shipped name (``convnet720``) or from a ``.toml`` path."""
    path = Path(name_or_path)
    if path.suffix != ".toml" or not path.exists():
        found = [d / f"{name_or_path}.toml" for d in _spaces_dirs()]
        found = [p for p in found if p.exists()]
        if not found:
            if path.suffix == ".toml":
                raise NasProxyError(f"search space file {str(path)!r} does not exist")
            raise UnknownNameError("search space", str(name_or_path), list_spaces())
        path = found[0]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:  # a binary file is not TOML either
        raise NasProxyError(f"cannot read search space {str(path)!r}: {one_line(str(exc), 200)}") from exc
    axes = data.get("axes")
    if not isinstance(axes, dict):
        raise NasProxyError(f"search space {str(path)!r} has no [axes] table")
    for axis, values in axes.items():
        if not isinstance(values, list):
            raise NasProxyError(f"search space {str(path)!r}: axis {axis} must be a list of values, got {values!r:.40}")
    try:
        return SearchSpace(
            name=str(data.get("name", path.stem)),
            axes=tuple((str(k), tuple(v)) for k, v in axes.items()),
            description=str(data.get("description", "")),
        )
    except NasProxyError as exc:
        raise NasProxyError(f"search space {str(path)!r}: {exc}") from exc
