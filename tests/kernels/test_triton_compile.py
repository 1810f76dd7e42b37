"""The Triton kernels compile for a Hopper GPU (sm_90) on a machine without one.

The interpreter runs the kernels' semantics but never lowers them, so a kernel
that the GPU compiler rejects (a type it cannot lower, a layout it cannot
build) would pass every interpreter test. This file compiles the kernels to
PTX with triton's bundled toolchain for ``sm_90`` and checks the properties the
speed depends on: 16-byte vector loads and stores, no 64-bit division per
element, and no fused multiply-add in the float32 paths whose bits must equal
the unfused chain (contraction off). Skips when triton or its NVIDIA backend
is missing.
"""

from __future__ import annotations

import re

import pytest

pytest.importorskip("triton")

from dropkit.kernels import triton as kt  # noqa: E402

try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as error:  # pragma: no cover - triton without the compiler API
    pytest.skip(f"triton's compiler API is unavailable: {error}", allow_module_level=True)

if kt.INTERPRETED:
    pytest.skip("TRITON_INTERPRET is set for this process", allow_module_level=True)

_HOPPER = GPUTarget("cuda", 90, 32)
_MASK_SIGNATURE = {
    "x_ptr": "*fp32", "out_ptr": "*fp32", "numel": "i32", "seed": "i64", "offset": "i64",
    "state_ptr": "*i64", "from_state": "i32", "block_base": "i64", "threshold": "i32",
    "scale_bits": "i64",
    "BLOCK": "constexpr", "F64": "constexpr", "BF16_BITS": "constexpr",
}
_FUSED_SIGNATURE = {
    "x_ptr": "*fp32", "bias_ptr": "*fp32", "residual_ptr": "*fp32", "out_ptr": "*fp32",
    "numel": "i32", "hidden": "i32", "inv_hidden": "fp32", "seed": "i64", "offset": "i64",
    "state_ptr": "*i64", "from_state": "i32", "threshold": "i32", "scale_bits": "i64",
    "BLOCK": "constexpr", "ACT": "constexpr", "BF16_BITS": "constexpr",
    "ROW_ALIGNED": "constexpr",
}


def _ptx(kernel, signature: dict, constants: dict, aligned: list[int], fp_fusion: bool) -> str:
    # What a launch on real tensors specialises: 16-byte aligned pointers and sizes.
    attrs = {(index,): [["tt.divisibility", 16]] for index in aligned}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs)
    try:
        compiled = triton.compile(
            source, target=_HOPPER, options={"num_warps": 4, "enable_fp_fusion": fp_fusion}
        )
    except RuntimeError as error:  # no ptxas / CUDA backend in this triton build
        if "ptxas" in str(error).lower() or "backend" in str(error).lower():
            pytest.skip(f"cannot compile for sm_90 here: {error}")
        raise
    return compiled.asm["ptx"]


def _element_loads(ptx: str) -> list[str]:
    """Global loads other than the two 64-bit reads of the ``[seed, offset]`` state."""
    loads = re.findall(r"ld\.global\S*", ptx)
    key_loads = [op for op in loads if op == "ld.global.b64"]
    assert len(key_loads) <= 2, loads
    return [op for op in loads if op != "ld.global.b64"]


def _with_dtype(signature: dict, dtype: str, names: tuple[str, ...]) -> dict:
    return {**signature, **{name: f"*{dtype}" for name in names}}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_mask_kernel_moves_16_byte_vectors(dtype):
    ptx = _ptx(
        kt._mask_scale_kernel, _with_dtype(_MASK_SIGNATURE, dtype, ("x_ptr", "out_ptr")),
        {"BLOCK": 4096, "F64": False, "BF16_BITS": False}, [0, 1, 2], fp_fusion=False,
    )
    loads, stores = _element_loads(ptx), re.findall(r"st\.global\S*", ptx)
    assert loads and all(".v4" in op for op in loads), sorted(set(loads))
    assert stores and all(".v4" in op for op in stores), sorted(set(stores))
    assert not re.search(r"\b(div|rem)\.\w*64", ptx)
    if dtype == "bf16":
        assert "cvt.rn.bf16" in ptx  # the hardware conversion, round to nearest even


@pytest.mark.parametrize("activation", [0, 1])
def test_fused_kernel_loads_vectors_and_keeps_float32_products_unfused(activation):
    constants = {"BLOCK": 4096, "ACT": activation, "BF16_BITS": False, "ROW_ALIGNED": True}
    names = ("x_ptr", "bias_ptr", "residual_ptr", "out_ptr")
    ptx = _ptx(kt._bias_dropout_add_kernel, _with_dtype(_FUSED_SIGNATURE, "fp32", names),
               constants, [0, 1, 2, 3, 4, 5], fp_fusion=False)
    assert "fma.rn" not in ptx
    loads = _element_loads(ptx)
    assert loads and all(".v4" in op for op in loads), sorted(set(loads))
    # One 64-bit modulo per program for the first column, none per element.
    assert len(re.findall(r"\b(div|rem)\.\w*64", ptx)) <= 2


def test_contraction_is_off_where_it_would_happen():
    # GELU's backward has the multiply-add cdf + h * pdf: contracted when fusion is
    # on, two roundings when it is off (libdevice's erf/exp keep their own fmas).
    signature = {
        "grad_ptr": "*fp32", "x_ptr": "*fp32", "bias_ptr": "*fp32", "grad_x_ptr": "*fp32",
        **{k: v for k, v in _FUSED_SIGNATURE.items() if not k.endswith("_ptr") or k == "state_ptr"},
    }
    constants = {"BLOCK": 4096, "ACT": 2, "BF16_BITS": False, "ROW_ALIGNED": True}
    kernel = kt._bias_dropout_add_backward_kernel
    off = _ptx(kernel, signature, constants, [0, 1, 2, 3, 4, 5], fp_fusion=False)
    on = _ptx(kernel, signature, constants, [0, 1, 2, 3, 4, 5], fp_fusion=True)
    assert off.count("fma.rn") < on.count("fma.rn")
