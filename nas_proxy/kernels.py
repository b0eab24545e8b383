"""CPU kernels for narrow nets: 2x2 average pooling, and group norm -> activation -> pooling fused.

Both compute what PyTorch's kernels compute, faster on a CPU where a narrow ConvNet's step is
overhead- and memory-bound; elsewhere callers keep PyTorch's kernels.

**Pooling** (:func:`avg_pool_2x2`): ``F.avg_pool2d(x, 2, 2)`` bit for bit, by a GEMM or strided adds.

**Fused block** (:func:`norm_act_pool`): each of PyTorch's kernels (group norm, ReLU, pooling, and
their backwards) streams the whole activation through memory, ten passes over a 16 MB map for a
stack of 5 ConvNet-D3-W8 on 100 images. ``csrc/norm_act_pool.c`` does the block one group of
channels at a time while it sits in cache, and recomputes the activation in the backward instead
of storing it: faster than PyTorch's kernels at 32x32 and 16x16 (the figures are in
results/benchmarks/README.md), equal to them to float rounding (1e-7 relative), not bit for bit:
the sums run in another order.

The C file is compiled at first use with the system's C compiler (``$CC``, else ``cc``) into a
cache folder (``$NAS_PROXY_CACHE``, else ``~/.cache/nas_proxy``), keyed by the source, the
compiler and this CPU's flags (it is built for this CPU). Without a compiler, or with
``NAS_PROXY_FUSED=0``, :func:`available` is False and callers keep PyTorch's kernels.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from nas_proxy.device import on_cpu

SOURCE = Path(__file__).parent / "csrc" / "norm_act_pool.c"
# Rows are staged in fixed buffers of this many floats in the C code.
MAX_WIDTH = 4096
# Narrower maps (8x8) run faster in PyTorch's kernels (figures in results/benchmarks/README.md):
# the C loops work on rows of 16 floats.
MIN_WIDTH = 16
_FLAGS = ("-O3", "-march=native", "-std=c99", "-shared", "-fPIC")


def _cpu_fingerprint() -> str:
    """This CPU's model and instruction-set flags: a library built with -march=native runs only there."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(lines))


def _cache_dir() -> Path:
    root = os.environ.get("NAS_PROXY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "nas_proxy")
    return Path(root) / "kernels"


def _compile(compiler: str, target: Path) -> bool:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target, then rename: workers compiling at once never load a half-written file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        for flags in (_FLAGS, tuple(f for f in _FLAGS if f != "-march=native")):
            done = subprocess.run(
                [compiler, *flags, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, timeout=120, check=False
            )
            if done.returncode == 0:
                os.replace(tmp, target)
                return True
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def _library() -> Any:
    """The compiled kernel (ctypes), or None where it cannot be built or is switched off."""
    if os.environ.get("NAS_PROXY_FUSED", "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None
    key = hashlib.sha256(
        b"\0".join(s.encode() for s in (SOURCE.read_text(), compiler, " ".join(_FLAGS), _cpu_fingerprint()))
    ).hexdigest()[:16]
    target = _cache_dir() / f"norm_act_pool-{key}.so"
    lib = None
    for attempt in range(2):
        try:
            # A second attempt rebuilds a cached file that would not load.
            if (attempt or not target.exists()) and not _compile(compiler, target):
                return None
            lib = ctypes.CDLL(str(target))
            break
        except (OSError, subprocess.SubprocessError):
            continue
    if lib is None:
        return None
    ptr, long_, float_ = ctypes.c_void_p, ctypes.c_long, ctypes.c_float
    lib.norm_act_pool_forward.argtypes = [ptr] * 3 + [long_] * 5 + [float_] * 2 + [ptr] * 3
    lib.norm_act_pool_backward.argtypes = [ptr] * 6 + [long_] * 5 + [float_] + [ptr] * 3
    return lib


def available() -> bool:
    """Whether the fused kernel is built and loaded here (else callers use PyTorch's kernels)."""
    return _library() is not None


def supports(x: torch.Tensor) -> bool:
    """Whether :func:`norm_act_pool` takes ``x``: a float32 (N, C, H, W) CPU map that is wide enough."""
    return (
        on_cpu(x.device)
        and x.dtype == torch.float32
        and x.dim() == 4
        and MIN_WIDTH <= x.shape[-1] <= MAX_WIDTH
        and x.shape[-2] >= 2
        and available()
    )


class _NormActPool(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float, slope: float
    ) -> torch.Tensor:
        lib = _library()
        n, c, h, w = x.shape
        x, weight, bias = x.contiguous(), weight.detach().contiguous(), bias.detach().contiguous()
        out = x.new_empty(n, c, h // 2, w // 2)
        mean, rstd = x.new_empty(n * groups), x.new_empty(n * groups)
        lib.norm_act_pool_forward(
            x.data_ptr(), weight.data_ptr(), bias.data_ptr(), n, c, h, w, groups, eps, slope,
            out.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
        )  # fmt: skip
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.groups, ctx.slope = groups, slope
        return out

    @staticmethod
    @once_differentiable  # type: ignore[misc]
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, bias, mean, rstd = ctx.saved_tensors
        n, c, h, w = x.shape
        grad = grad.contiguous()
        dx, dweight, dbias = torch.empty_like(x), torch.zeros_like(weight), torch.zeros_like(bias)
        _library().norm_act_pool_backward(
            x.data_ptr(), weight.data_ptr(), bias.data_ptr(), mean.data_ptr(), rstd.data_ptr(), grad.data_ptr(),
            n, c, h, w, ctx.groups, ctx.slope, dx.data_ptr(), dweight.data_ptr(), dbias.data_ptr(),
        )  # fmt: skip
        return dx, dweight, dbias, None, None, None


def norm_act_pool(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int, eps: float, slope: float
) -> torch.Tensor:
    """``avg_pool2d(leaky_relu(group_norm(x, groups, weight, bias, eps), slope), 2, 2)`` (slope 0: ReLU).

    Differentiable once (training; a second-order gradient raises). Only where :func:`supports`.
    """
    if x.shape[1] % groups:
        raise ValueError(f"{x.shape[1]} channels do not split into {groups} groups")
    out: torch.Tensor = _NormActPool.apply(x, weight, bias, groups, eps, slope)
    return out


# ----------------------------------------------------------------------------- 2x2 average pooling


class _AvgPool2x2(torch.autograd.Function):
    """2x2 average pooling by strided adds, in the order of PyTorch's CPU kernel (see avg_pool_2x2)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        v = x.view(n, c, h // 2, 2, w // 2, 2)
        out = torch.add(v[:, :, :, 0, :, 0], v[:, :, :, 0, :, 1])  # ((x00 + x01) + x10) + x11, as the kernel sums
        out.add_(v[:, :, :, 1, :, 0]).add_(v[:, :, :, 1, :, 1])
        return out.div_(4)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        n, c, h2, w2 = grad.shape
        spread = (grad / 4).view(n, c, h2, 1, w2, 1).expand(n, c, h2, 2, w2, 2)  # each input gets its window's share
        return spread.reshape(n, c, 2 * h2, 2 * w2)


_POOL_MATRICES: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}
# Per (shape, dtype, device, threads): does the GEMM form reproduce PyTorch's kernel bit for bit here?
# A cache of a fact about this machine (the probe's answer), not a setting: results do not depend on it.
_GEMM_EXACT: dict[tuple[Any, ...], bool] = {}


def _pool_matrix(w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The fixed (2W, W/2) matrix that averages each 2x2 window of a pair of image rows."""
    key = (w, device, dtype)
    pool = _POOL_MATRICES.get(key)
    if pool is None:
        pool = torch.zeros(2 * w, w // 2, device=device, dtype=dtype)
        cols = torch.arange(w // 2, device=device)
        for offset in (0, 1, w, w + 1):  # the 2x2 window: two columns in each of two rows
            pool[2 * cols + offset, cols] = 0.25
        _POOL_MATRICES[key] = pool
    return pool


def _gemm_pool(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    return (x.reshape(-1, 2 * w) @ _pool_matrix(w, x.device, x.dtype)).view(n, c, h // 2, w // 2)


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2, 2)``, bit for bit, faster on a CPU for narrow nets.

    PyTorch's NCHW pooling kernel walks one output at a time and dominated a narrow ConvNet's
    step. Two exact replacements, faster forward plus backward (figures in
    results/benchmarks/README.md): one GEMM of each pair of image rows with a fixed (2W, W/2)
    matrix of 0.25s (the fastest), and three strided adds in the kernel's own order
    (``((x00 + x01) + x10) + x11``, then ``/ 4``). A GEMM may sum a window's four products in
    another order, which depends on the BLAS and the shape (this project's CPU: exact at widths 16
    and 32, not 14), so the GEMM is used for a shape only after a random probe of that
    shape came out identical to the kernel (its backward is exact anyway: one product per input).
    Without autograd (testing) the strided adds serve: shapes seen once do not repay a probe.
    Odd sizes (floor mode drops a row or column) and other devices keep the plain kernel.
    """
    h, w = x.shape[-2:]
    if not on_cpu(x.device) or h % 2 or w % 2 or not x.is_contiguous():
        return F.avg_pool2d(x, 2, 2)  # a GPU's pooling kernel is fast: the tricks are for CPUs
    if not torch.is_grad_enabled():  # testing: shapes seen once, not worth a probe
        return _AvgPool2x2.forward(None, x)
    key = (tuple(x.shape), x.dtype, x.device, torch.get_num_threads())
    exact = _GEMM_EXACT.get(key)
    if exact is None:
        with torch.no_grad():
            probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
            exact = _GEMM_EXACT[key] = torch.equal(_gemm_pool(probe), F.avg_pool2d(probe, 2, 2))
    if exact:
        return _gemm_pool(x)
    out: torch.Tensor = _AvgPool2x2.apply(x)
    return out
