"""Plugin kernels under Triton's CPU interpreter against their numpy references, and their PTX.

The kernels run on CPU torch tensors through Triton's interpreter (exact, slow: tiny shapes). The
references are checked first against torch's own convolution and matmul, written here independently.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from sparsecc.plugins import DEPTHWISE_SUBGEMM, GROUPWISE_CONV, GROUPWISE_LINEAR, get_reference

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton", reason="triton is not installed (pip install 'sparsecc[test]')")

from sparsecc.plugins.triton_kernels import launch_kept_k_conv, launch_kept_k_linear  # noqa: E402

F = torch.nn.functional
TOL = {np.float32: 2e-5, np.float16: 2e-2}


def _torch_conv(x, w, b, strides, pads, dilations, groups=1):
    top, left, bottom, right = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    return F.conv2d(torch.from_numpy(xp), torch.from_numpy(w.astype(np.float64)), torch.from_numpy(b.astype(np.float64)),
                    stride=strides, dilation=dilations, groups=groups).numpy()


def _close(actual, expected, dtype):
    scale = max(1.0, float(np.max(np.abs(expected))))
    err = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
    assert err <= TOL[dtype] * scale, f"max error {err} > {TOL[dtype]} x {scale}"


CONV_CASES = [
    # (N, C, H, W, Cout, kernel, strides, pads [t, l, b, r], dilations, kept fraction, dtype)
    (2, 5, 9, 7, 6, (3, 3), (2, 1), (1, 0, 2, 1), (1, 2), 0.5, np.float32),
    (1, 3, 6, 5, 17, (2, 3), (1, 2), (0, 1, 0, 1), (1, 1), 0.75, np.float16),
    (1, 4, 5, 5, 3, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 0.25, np.float32),
]


@pytest.mark.parametrize("n,c,h,w,cout,k,s,p,d,frac,dtype", CONV_CASES)
def test_groupwise_conv_kernel_matches_reference_and_masked_conv(n, c, h, w, cout, k, s, p, d, frac, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((cout, c, *k)).astype(dtype)
    bias = rng.standard_normal(cout).astype(dtype)
    rows = c * k[0] * k[1]
    kept = np.sort(rng.choice(rows, max(1, int(round(frac * rows))), replace=False)).astype(np.int32)
    wk = np.ascontiguousarray(weight.reshape(cout, rows)[:, kept])
    attrs = dict(kernel_shape=list(k), strides=list(s), pads=list(p), dilations=list(d))

    # the reference is the original conv with the removed im2col rows zeroed (torch, float64)
    masked = np.zeros_like(weight.reshape(cout, rows))
    masked[:, kept] = wk
    expected = _torch_conv(x, masked.reshape(weight.shape), bias, s, p, d)
    (ref,) = get_reference(GROUPWISE_CONV)(x, wk, kept, bias, **attrs, plugin_namespace="sparsecc", aot=1)
    assert ref.dtype == dtype and ref.shape == expected.shape
    _close(ref, expected, dtype)

    y = torch.empty(expected.shape, dtype=torch.from_numpy(x).dtype)
    oh, ow = expected.shape[2:]
    scalars = dict(N=n, C=c, H=h, W=w, COUT=cout, COUT_G=cout, CIN_G=c, OH=oh, OW=ow, K=kept.size, KH=k[0], KW=k[1],
                   SH=s[0], SW=s[1], PH=p[0], PW=p[1], DH=d[0], DW=d[1])
    launch_kept_k_conv(torch.from_numpy(x), torch.from_numpy(wk.reshape(1, cout, -1)),
                       torch.from_numpy(kept.reshape(1, -1)), torch.from_numpy(bias), y, scalars, groups=1)
    _close(y.numpy(), ref, dtype)


DW_CASES = [
    # (N, C, H, W, kernel, strides, pads, dilations, kept per group, dtype): C = 40 leaves a partial last group
    (1, 40, 7, 6, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 100, np.float32),
    (2, 32, 5, 5, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 37, np.float16),
]


@pytest.mark.parametrize("n,c,h,w,k,s,p,d,kept_per_group,dtype", DW_CASES)
def test_depthwise_subgemm_kernel_matches_reference_and_pruned_depthwise(n, c, h, w, k, s, p, d, kept_per_group, dtype):
    rng = np.random.default_rng(2)
    taps = k[0] * k[1]
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((c, 1, *k)).astype(dtype)
    bias = rng.standard_normal(c).astype(dtype)
    groups = -(-c // 32)
    # BWT: every group keeps the same number of (channel, tap) columns; the rest are pruned (zero)
    wg = np.zeros((groups, 32, kept_per_group), dtype=dtype)
    kept = np.zeros((groups, kept_per_group), dtype=np.int32)
    pruned = weight.copy().reshape(c, taps)
    pruned[:] = 0
    for g in range(groups):
        channels = min(32, c - 32 * g)
        # a partial last group has fewer real columns: it is padded to K' with zero-weight columns
        real = min(kept_per_group, channels * taps)
        cols = np.sort(rng.choice(channels * taps, real, replace=False))
        kept[g, :real] = cols
        for j, col in enumerate(cols):
            r, t = divmod(int(col), taps)
            wg[g, r, j] = weight[32 * g + r, 0].reshape(-1)[t]
            pruned[32 * g + r, t] = weight[32 * g + r, 0].reshape(-1)[t]
    attrs = dict(kernel_shape=list(k), strides=list(s), pads=list(p), dilations=list(d))
    expected = _torch_conv(x, pruned.reshape(weight.shape), bias, s, p, d, groups=c)
    (ref,) = get_reference(DEPTHWISE_SUBGEMM)(x, wg, kept, bias, **attrs)
    _close(ref, expected, dtype)

    y = torch.empty(expected.shape, dtype=torch.from_numpy(x).dtype)
    oh, ow = expected.shape[2:]
    scalars = dict(N=n, C=c, H=h, W=w, COUT=c, COUT_G=32, CIN_G=32, OH=oh, OW=ow, K=kept_per_group, KH=k[0],
                   KW=k[1], SH=s[0], SW=s[1], PH=p[0], PW=p[1], DH=d[0], DW=d[1])
    launch_kept_k_conv(torch.from_numpy(x), torch.from_numpy(wg), torch.from_numpy(kept), torch.from_numpy(bias), y,
                       scalars, groups=groups)
    _close(y.numpy(), ref, dtype)


@pytest.mark.parametrize("lead,kin,nout,frac,dtype", [((3,), 37, 19, 0.5, np.float32), ((2, 5), 24, 33, 0.3, np.float16)])
def test_groupwise_linear_kernel_matches_reference_and_matmul(lead, kin, nout, frac, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((*lead, kin)).astype(dtype)
    weight = rng.standard_normal((kin, nout)).astype(dtype)
    bias = rng.standard_normal(nout).astype(dtype)
    kept = np.sort(rng.choice(kin, max(1, int(frac * kin)), replace=False)).astype(np.int32)
    wk = np.ascontiguousarray(weight[kept])
    masked = np.zeros_like(weight, dtype=np.float64)
    masked[kept] = wk
    expected = (torch.from_numpy(x.astype(np.float64)) @ torch.from_numpy(masked)).numpy() + bias
    (ref,) = get_reference(GROUPWISE_LINEAR)(x, kept, wk, bias)
    _close(ref, expected, dtype)

    m = int(np.prod(lead))
    y = torch.empty((m, nout), dtype=torch.from_numpy(x).dtype)
    launch_kept_k_linear(torch.from_numpy(x.reshape(m, kin)), torch.from_numpy(kept), torch.from_numpy(wk),
                         torch.from_numpy(bias), y, {"M": m, "KIN": kin, "K": kept.size, "NOUT": nout})
    _close(y.numpy().reshape(ref.shape), ref, dtype)


# ------------------------------------------------------------------------------------------------
# PTX for sm_80 / sm_90 without a GPU
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", [GROUPWISE_CONV, GROUPWISE_LINEAR, DEPTHWISE_SUBGEMM])
@pytest.mark.parametrize("arch", [80, 90])
def test_ptx_declares_exactly_the_tensorrt_arguments(op, arch):
    from sparsecc.plugins.ptx import DEFAULT_MAX_PTX, assemble_with_ptxas, entry_parameters, plugin_kernel_ptx
    from sparsecc.plugins.triton_kernels import CONV_SCALARS, LINEAR_SCALARS

    kernel = plugin_kernel_ptx(op, "float16", arch)
    scalars = LINEAR_SCALARS if op == GROUPWISE_LINEAR else CONV_SCALARS
    name, params = entry_parameters(kernel.ptx)
    assert name == kernel.name
    # 4 input pointers, the int32 scalars, 1 output pointer - nothing hidden after them
    decls = [d for _, d in params]
    assert len(params) == 4 + len(scalars) + 1
    assert all(".u64" in d for d in decls[:4]) and ".u64" in decls[-1]
    assert all(d == ".u32" for d in decls[4:-1])
    # Triton 3.9 appends two unused scratch pointers; they are removed, not passed garbage
    assert [d for _, d in kernel.removed_hidden] in ([], [".u64 .ptr .global .align 1"] * 2)
    version = re.search(r"\.version (\d+)\.(\d+)", kernel.ptx)
    assert int(version.group(1)) * 10 + int(version.group(2)) <= DEFAULT_MAX_PTX
    assert f".target sm_{arch}" in kernel.ptx
    try:
        errors = assemble_with_ptxas(kernel.ptx, arch)
    except FileNotFoundError:
        return
    assert errors is None, errors
