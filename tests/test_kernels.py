"""The CPU kernels compute what PyTorch's compute: the fused norm -> activation -> pooling block, 2x2 pooling."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nas_proxy import kernels
from nas_proxy.kernels import avg_pool_2x2

needs_kernel = pytest.mark.skipif(not kernels.available(), reason="no C compiler here: PyTorch's kernels serve")


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, slope: float) -> torch.Tensor:
    return F.avg_pool2d(F.leaky_relu(F.group_norm(x, groups, weight, bias, 1e-5), slope), 2, 2)


def inputs(shape: tuple[int, int, int, int], mean: float, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    c = shape[1]
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 0.5 + mean
    weight = 1 + 0.2 * torch.randn(c, generator=g, dtype=torch.float64)
    bias = 0.1 * torch.randn(c, generator=g, dtype=torch.float64)
    return [t.to(dtype).requires_grad_(True) for t in (x, weight, bias)]


@needs_kernel
@pytest.mark.parametrize(
    ("shape", "groups"),
    [
        ((6, 10, 32, 32), 10),  # instance norm (a group a channel), the ConvNet's block
        ((3, 8, 16, 16), 2),  # group norm, several channels a group
        ((4, 6, 17, 21), 6),  # odd sizes: floor mode drops the last row and column
        ((2, 4, 16, 40), 4),  # wider than the 16-float inner loop, with a remainder
    ],
)
@pytest.mark.parametrize("slope", [0.0, 0.01], ids=["relu", "leaky"])
@pytest.mark.parametrize("mean", [0.0, 3.0], ids=["centred", "offset"])
def test_matches_float64_as_closely_as_pytorch_float32(
    shape: tuple[int, int, int, int], groups: int, slope: float, mean: float
) -> None:
    """Output and all three gradients, against exact (float64) arithmetic: no worse than PyTorch's
    own float32 kernels (whose group-norm backward loses digits on an offset input)."""
    x64, w64, b64 = inputs(shape, mean, torch.float64)
    grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=torch.Generator().manual_seed(1))
    truth = [reference(x64, w64, b64, groups, slope)]
    truth += torch.autograd.grad(truth[0], (x64, w64, b64), grad.double())
    x, w, b = inputs(shape, mean, torch.float32)
    got = [kernels.norm_act_pool(x, w, b, groups, 1e-5, slope)]
    got += torch.autograd.grad(got[0], (x, w, b), grad)
    x, w, b = inputs(shape, mean, torch.float32)
    theirs = [reference(x, w, b, groups, slope)]
    theirs += torch.autograd.grad(theirs[0], (x, w, b), grad)
    for name, ours, pytorch, exact in zip(("out", "dx", "dweight", "dbias"), got, theirs, truth, strict=True):
        scale = exact.abs().max()
        error = (ours.double() - exact).abs().max() / scale
        pytorch_error = (pytorch.double() - exact).abs().max() / scale
        assert error <= max(1e-5, 2 * pytorch_error), f"{name}: {error:.1e} (PyTorch float32: {pytorch_error:.1e})"


@needs_kernel
def test_a_non_finite_input_stays_in_its_own_group() -> None:
    """A diverging model's NaN reaches its own outputs and no other model's (the stack's channels)."""
    x, w, b = (t.detach() for t in inputs((2, 4, 16, 16), 0.0, torch.float32))
    x[0, 1, 3, 3] = float("nan")
    out = kernels.norm_act_pool(x, w, b, 4, 1e-5, 0.0)
    assert torch.isnan(out[0, 1]).all()
    mask = torch.ones_like(out, dtype=torch.bool)
    mask[0, 1] = False
    assert torch.isfinite(out[mask]).all()


@needs_kernel
def test_a_second_order_gradient_raises() -> None:
    """Gradient matching differentiates through gradients; the kernel's backward is not differentiable."""
    x, w, b = inputs((2, 4, 16, 16), 0.0, torch.float32)
    (gx,) = torch.autograd.grad(kernels.norm_act_pool(x, w, b, 4, 1e-5, 0.0).sum(), (x,), create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()  # type: ignore[no-untyped-call]


@needs_kernel
def test_supports_only_wide_enough_float32_cpu_maps() -> None:
    assert kernels.supports(torch.zeros(2, 4, 16, 16))
    assert not kernels.supports(torch.zeros(2, 4, 8, 8))  # narrower maps: PyTorch's kernels are faster
    assert not kernels.supports(torch.zeros(2, 4, 16, 16, dtype=torch.float64))
    assert not kernels.supports(torch.zeros(4, 16, 16))
    with pytest.raises(ValueError, match="groups"):
        kernels.norm_act_pool(torch.zeros(2, 6, 16, 16), torch.ones(6), torch.zeros(6), 4, 1e-5, 0.0)


@pytest.fixture
def fresh_library() -> Iterator[None]:
    kernels._library.cache_clear()
    yield
    kernels._library.cache_clear()


@pytest.mark.usefixtures("fresh_library")
def test_switched_off_or_without_a_compiler_pytorch_serves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NAS_PROXY_FUSED", "0")
    assert not kernels.available() and not kernels.supports(torch.zeros(2, 4, 16, 16))
    kernels._library.cache_clear()
    monkeypatch.delenv("NAS_PROXY_FUSED")
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setenv("PATH", str(tmp_path))  # and no cc or gcc on the path either
    assert not kernels.available()


@needs_kernel
@pytest.mark.usefixtures("fresh_library")
def test_the_kernel_is_built_once_into_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NAS_PROXY_CACHE", str(tmp_path))
    assert kernels.available()
    built = list((tmp_path / "kernels").glob("norm_act_pool-*.so"))
    assert len(built) == 1
    kernels._library.cache_clear()
    stamp = built[0].stat().st_mtime_ns
    assert kernels.available() and built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


@needs_kernel
@pytest.mark.usefixtures("fresh_library")
def test_a_cached_file_that_will_not_load_is_rebuilt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NAS_PROXY_CACHE", str(tmp_path / "first"))
    assert kernels.available()
    (built,) = (tmp_path / "first" / "kernels").glob("norm_act_pool-*.so")
    # The same file name in another cache, broken (a path never loaded, so dlopen reads it).
    broken = tmp_path / "second" / "kernels" / built.name
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a shared library")
    kernels._library.cache_clear()
    monkeypatch.setenv("NAS_PROXY_CACHE", str(tmp_path / "second"))
    assert kernels.available()
    assert broken.read_bytes()[:4] == b"\x7fELF"


@pytest.mark.parametrize(
    "size", [(2, 3, 8, 8), (2, 5, 7, 6), (1, 2, 4, 10), (4, 8, 14, 14), (3, 8, 12, 20), (2, 4, 32, 32)]
)
def test_avg_pool_2x2_is_avg_pool2d_bit_for_bit(size: tuple[int, int, int, int]) -> None:
    x = torch.randn(*size, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    grad = torch.randn(size[0], size[1], size[2] // 2, size[3] // 2, generator=torch.Generator().manual_seed(1))
    got, expected = avg_pool_2x2(x), F.avg_pool2d(y, 2, 2)
    assert torch.equal(got, expected)
    with torch.no_grad():  # testing takes another path
        assert torch.equal(avg_pool_2x2(x.detach()), expected)
    got.backward(grad)  # type: ignore[no-untyped-call]
    expected.backward(grad)  # type: ignore[no-untyped-call]
    assert x.grad is not None and y.grad is not None
    assert torch.equal(x.grad, y.grad)
