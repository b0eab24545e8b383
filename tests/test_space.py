from __future__ import annotations

from pathlib import Path

import pytest

from nas_proxy.errors import NasProxyError, UnknownNameError
from nas_proxy.space import AXES, ArchSpec, list_spaces, load_space


def test_default_spec_id() -> None:
    assert ArchSpec().id == "ConvNet-D3-W128-AR-IN-AP"


def test_convnet720_has_720_unique_ids_that_round_trip() -> None:
    space = load_space("convnet720")
    ids = [s.id for s in space]
    assert len(space) == 720 and len(set(ids)) == 720
    for spec in space:
        assert ArchSpec.from_id(spec.id) == spec
        assert space[space.index(spec)] == spec


def test_canonical_order_is_product_in_file_order() -> None:
    space = load_space("convnet720")
    assert space[0].id == "ConvNet-D1-W32-AS-NN-NP"
    assert space[1].id == "ConvNet-D1-W32-AS-NN-MP"
    assert space[719].id == "ConvNet-D4-W256-AL-GN-AP"


def test_shipped_spaces() -> None:
    assert {"convnet720", "convnet720-narrow", "tiny"} <= set(list_spaces())
    narrow = load_space("convnet720-narrow")
    assert len(narrow) == 720 and narrow.axis_values("width") == (4, 8, 16, 32)
    assert len(load_space("tiny")) == 16


@pytest.mark.parametrize("n", [24, 48, 5])
def test_sample_is_stratified_deterministic_and_distinct(n: int) -> None:
    space = load_space("convnet720")
    a, b = space.sample(n, seed=0), space.sample(n, seed=0)
    assert a == b and len(set(a)) == n
    assert a == sorted(a, key=space.index)
    if n >= 5:  # the largest axis has 5 values
        for axis in AXES:
            assert {getattr(s, axis) for s in a} == set(space.axis_values(axis)), axis
    assert space.sample(n, seed=1) != a


def test_sample_whole_space_and_bounds() -> None:
    space = load_space("tiny")
    assert sorted(space.sample(16, seed=3), key=space.index) == list(space)
    with pytest.raises(NasProxyError, match="between 1 and 16"):
        space.sample(17, seed=0)


def test_filter_glob() -> None:
    space = load_space("convnet720")
    got = space.filter("ConvNet-D3-*-BN-*")
    assert len(got) == 4 * 3 * 3 and all(s.depth == 3 and s.norm == "batchnorm" for s in got)
    assert space.select(pattern="ConvNet-D1-W32-AS-*", sample=3, seed=0) == space.select(
        pattern="ConvNet-D1-W32-AS-*", sample=3, seed=0
    )
    with pytest.raises(NasProxyError, match="matches no architecture"):
        space.select(pattern="nothing*")


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("ConvNet-D3-W128-AR-XX-AP", "XX"),
        ("ConvNet-Dx-W128-AR-IN-AP", "depth"),
        ("ResNet-D3-W128-AR-IN-AP", "malformed"),
        ("ConvNet-D3-W128-AR-IN", "malformed"),
    ],
)
def test_from_id_errors_name_the_bad_part(bad: str, needle: str) -> None:
    with pytest.raises(NasProxyError, match=needle):
        ArchSpec.from_id(bad)


def test_space_membership_error_names_axis_and_choices() -> None:
    space = load_space("convnet720")
    with pytest.raises(NasProxyError, match=r"depth 9 is not one of 1, 2, 3, 4"):
        space.get("ConvNet-D9-W128-AR-IN-AP")


def test_unknown_space_lists_valid() -> None:
    with pytest.raises(UnknownNameError, match="convnet720"):
        load_space("nosuch")


def test_load_space_from_path_and_malformed(tmp_path: Path) -> None:
    good = tmp_path / "mine.toml"
    good.write_text(
        'name = "mine"\n[axes]\ndepth = [1]\nwidth = [8]\nact = ["relu"]\nnorm = ["batchnorm"]\npool = ["maxpool"]\n'
    )
    assert [s.id for s in load_space(good)] == ["ConvNet-D1-W8-AR-BN-MP"]
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[axes]\ndepth = [1]\n')
    with pytest.raises(NasProxyError, match="must define the axes"):
        load_space(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(NasProxyError, match="cannot read"):
        load_space(broken)
    unknown = tmp_path / "unk.toml"
    unknown.write_text('[axes]\ndepth = [1]\nwidth = [8]\nact = ["tanh"]\nnorm = ["none"]\npool = ["none"]\n')
    with pytest.raises(NasProxyError, match="tanh"):
        load_space(unknown)
