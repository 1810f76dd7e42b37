"""The Triton kernels, run on CPU by Triton's interpreter, against the reference bit for bit.

``TRITON_INTERPRET=1`` must be set when a kernel is *defined*, so this module
loads a private copy of ``dropkit/kernels/triton.py`` (``_interpreted``) with
the variable set, and sets it again around each test (through ``monkeypatch``,
so no other test module sees it). ``sys.modules["dropkit.kernels.triton"]`` is
untouched: on a GPU machine the CUDA tests still get compiled kernels.

The interpreter costs ~5 ms per program whatever its size, so the module's
block is 65,536 elements there, sizes are small, and a few tests pass a small
``block`` to cover many programs and block boundaries.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

import dropkit  # noqa: E402
from dropkit import _ops, kernels  # noqa: E402
from dropkit import functional as F  # noqa: E402
from dropkit.functional import fused as _fused  # noqa: E402
from dropkit.kernels import reference  # noqa: E402
from dropkit.random import keep_mask, keep_scale, philox4x32  # noqa: E402
from tests.kernels.bitwise import assert_bit_identical  # noqa: E402

_KERNEL_FILE = Path(kernels.__file__).with_name("triton.py")
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
U64 = 1 << 64


def _load_interpreted() -> types.ModuleType:
    name = "dropkit_kernels_triton_interpreted"
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        spec = importlib.util.spec_from_file_location(name, _KERNEL_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return module


kt = _load_interpreted()


@pytest.fixture(autouse=True)
def _interpreter_env(monkeypatch):
    # Triton reads the knob again at some call sites; keep it on for these tests only.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with warnings.catch_warnings():
        # numpy warns on the inf/NaN arithmetic the edge-value tests do on purpose.
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"triton\..*")
        yield


@pytest.fixture
def served_by_interpreter(monkeypatch):
    """Route CPU tensors of the served dtypes through the interpreted Triton kernels."""
    monkeypatch.setattr(
        kernels, "triton_backend", lambda x: kt if x.dtype in kt.DTYPES else None
    )


_EDGE = [
    float("inf"), float("-inf"), float("nan"), -0.0, 0.0, 1e-40, -1e-40, 1e-45, 3e38, -3e38,
    6e4, 7e4, 1e-7, 3.3895e38, 1.0, -2.5,
]


def _input(numel: int, dtype: torch.dtype, data_seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(data_seed)
    x = torch.randn(numel, generator=gen, dtype=torch.float64) * 4
    # Infinities, NaN, signed zeros, float32/bfloat16 subnormals, values that
    # overflow once scaled, float16 overflow and subnormal territory.
    edge = torch.tensor(_EDGE, dtype=torch.float64)[:numel]
    x[: edge.numel()] = edge
    return x.to(dtype)


def _scale(threshold: int) -> float:
    return 65536 / threshold if threshold else 0.0


def _lanes_of_blocks(first_block: int, numel: int, seed: int, offset: int) -> torch.Tensor:
    """16-bit lanes of Philox blocks ``first_block, ...`` (mod 2**64), straight from philox4x32."""
    # Block numbers past 2**63 do not fit an int64 tensor: split them as Python ints.
    values = [(first_block + b) % U64 for b in range(-(-numel // 8))]
    counter = torch.tensor(
        [[v & 0xFFFFFFFF, v >> 32, offset & 0xFFFFFFFF, offset >> 32] for v in values],
        dtype=torch.int64,
    )
    key = torch.tensor([seed & 0xFFFFFFFF, seed >> 32], dtype=torch.int64)
    words = philox4x32(counter, key)
    return torch.stack((words & 0xFFFF, words >> 16), dim=-1).reshape(-1)[:numel]


# ------------------------------------------------------------------ known answers

# Random123's Philox4x32-10 known-answer vectors: (counter, key, output words).
_KNOWN_ANSWERS = [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    (
        [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
        [0xA4093822, 0x299F31D0],
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
    ),
]


@pytest.mark.parametrize("counter, key, words", _KNOWN_ANSWERS)
def test_kernel_reproduces_random123_known_answers(counter, key, words):
    block = counter[0] | counter[1] << 32
    offset = counter[2] | counter[3] << 32
    seed = key[0] | key[1] << 32
    lanes = [half for word in words for half in (word & 0xFFFF, word >> 16)]
    ones = torch.ones(8)
    # Element j is kept iff lane_j < threshold: dropped at threshold = lane_j,
    # kept at lane_j + 1. Two launches per lane pin every lane's exact value.
    for j, lane in enumerate(lanes):
        out = torch.empty(8)
        key = dict(seed=seed, offset=offset, block_base=block)
        at = kt._launch_mask(ones, out, lane, 1.0, **key)[j].item()
        above = kt._launch_mask(ones, out, lane + 1, 1.0, **key)
        assert (at, above[j].item()) == (0.0, 1.0), f"lane {j} is not {lane:#06x}"


# ------------------------------------------------------------------ bit identity

_KEYS = [
    (0, 0, 32768),
    (2**64 - 1, 2**64 - 1, 40000),
    (2**63, 2**63 - 1, 1),
    (2**31, 2**32 - 1, 65535),
    (123456789, 2**40 + 3, 65536),
    (7, 1, 0),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed, offset, threshold", _KEYS)
def test_mask_scale_matches_reference(dtype, seed, offset, threshold):
    x = _input(1001, dtype)
    expected = reference.mask_scale(x, seed, offset, threshold, _scale(threshold))
    assert_bit_identical(kt.mask_scale(x, seed, offset, threshold, _scale(threshold)), expected)
    inplace = x.clone()
    assert kt.mask_scale_(inplace, seed, offset, threshold, _scale(threshold)) is inplace
    assert_bit_identical(inplace, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("numel", [0, 1, 7, 8, 9, 127, 129, 1000])
def test_sizes_across_many_small_blocks(dtype, numel):
    # block=128: up to 8 programs, ragged tails inside a program and a Philox row.
    x = _input(numel, dtype, numel)
    out = torch.full_like(x, 5.0)
    kt._launch_mask(x, out, 30000, _scale(30000), seed=99, offset=2**63 + 1, block=128)
    assert_bit_identical(out, reference.mask_scale(x, 99, 2**63 + 1, 30000, _scale(30000)))


def test_one_program_boundary_at_the_default_block():
    # 65,537 elements: two programs of the interpreter's 65,536-element block.
    x = _input(65537, torch.float32)
    assert_bit_identical(
        kt.mask_scale(x, 5, 6, 32768, 2.0), reference.mask_scale(x, 5, 6, 32768, 2.0)
    )


@pytest.mark.parametrize("first_block", [2**32 - 5, 2**64 - 3])
def test_block_counter_carries_into_its_high_word(first_block):
    # Past 2**35 elements the block counter's low word wraps; a counter base
    # reaches that (and the 64-bit wrap) without a 2**35-element tensor.
    x = _input(8 * 16 + 3, torch.float32)
    out = kt._launch_mask(
        x, torch.empty_like(x), 40000, _scale(40000), seed=11, offset=2**33,
        block_base=first_block, block=64,
    )
    lanes = _lanes_of_blocks(first_block, x.numel(), 11, 2**33)
    assert_bit_identical(out, reference._apply(x, lanes < 40000, _scale(40000)))
    from_state = kt._launch_mask(
        x, torch.empty_like(x), 40000, _scale(40000), state=_ops.make_state(11, 2**33),
        block_base=first_block, block=64,
    )
    assert_bit_identical(from_state, out)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_state_tensor_variant_matches_scalars(dtype):
    x = _input(777, dtype)
    for seed, offset, threshold in _KEYS[:4]:
        state = _ops.make_state(seed, offset)
        expected = reference.mask_scale(x, seed, offset, threshold, _scale(threshold))
        assert_bit_identical(kt.mask_scale_state(x, state, threshold, _scale(threshold)), expected)
        inplace = x.clone()
        kt.mask_scale_state_(inplace, state, threshold, _scale(threshold))
        assert_bit_identical(inplace, expected)


def test_state_tensor_must_be_int64_pair_on_the_device():
    with pytest.raises(ValueError, match=r"shape \(2,\).*torch.int32 \(3,\)"):
        kt.mask_scale_state(torch.ones(4), torch.zeros(3, dtype=torch.int32), 1, 1.0)


def test_non_contiguous_input_uses_row_major_order():
    x = _input(24 * 40, torch.float32).view(24, 40).t()
    expected = reference.mask_scale(x.contiguous(), 3, 4, 20000, _scale(20000))
    assert_bit_identical(kt.mask_scale(x, 3, 4, 20000, _scale(20000)), expected)
    view = x.clone().t().contiguous().t()  # same strides as x, its own storage
    kt.mask_scale_(view, 3, 4, 20000, _scale(20000))
    assert_bit_identical(view.contiguous(), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_streams_match_reference(dtype):
    x = _input(3 * 2 * 5 * 37, dtype).view(3, 2, 5, 37)
    seeds, offsets = [1, 2**64 - 1, 2**33], [0, 2**63]
    assert_bit_identical(
        kt.mask_scale_streams(x, seeds, offsets, 30000, _scale(30000)),
        reference.mask_scale_streams(x, seeds, offsets, 30000, _scale(30000)),
    )


def test_streams_longer_than_the_grid_fall_back_to_one_launch_each(monkeypatch):
    # CUDA caps grid axis 1 at 65535 blocks per stream; pretend it is 1 here.
    monkeypatch.setattr(kt, "_MAX_GRID_Y", 1)
    x = _input(2 * 3 * 300, torch.float16).view(2, 3, 300)
    seeds, offsets = [4, 2**64 - 2], [1, 2, 2**40]
    assert_bit_identical(
        kt.mask_scale_streams(x, seeds, offsets, 50000, _scale(50000)),
        reference.mask_scale_streams(x, seeds, offsets, 50000, _scale(50000)),
    )


_u64 = st.integers(0, U64 - 1)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.lists(st.integers(1, 23), min_size=1, max_size=3),
    dtype=st.sampled_from(DTYPES),
    seed=_u64,
    offset=_u64,
    threshold=st.integers(0, 65536),
    data_seed=st.integers(0, 1000),
)
def test_random_shapes_keys_and_dtypes_match_reference(
    shape, dtype, seed, offset, threshold, data_seed
):
    x = _input(int(torch.Size(shape).numel()), dtype, data_seed).view(shape)
    assert_bit_identical(
        kt.mask_scale(x, seed, offset, threshold, _scale(threshold)),
        reference.mask_scale(x, seed, offset, threshold, _scale(threshold)),
    )


@settings(max_examples=10, deadline=None)
@given(seeds=st.lists(_u64, min_size=1, max_size=3), offsets=st.lists(_u64, min_size=1, max_size=3),
       numel=st.integers(1, 300), threshold=st.integers(0, 65536))
def test_random_streams_match_reference(seeds, offsets, numel, threshold):
    x = _input(len(seeds) * len(offsets) * numel, torch.float32).view(len(seeds), len(offsets), -1)
    assert_bit_identical(
        kt.mask_scale_streams(x, seeds, offsets, threshold, _scale(threshold)),
        reference.mask_scale_streams(x, seeds, offsets, threshold, _scale(threshold)),
    )


# ------------------------------------------------------------------ through dropkit's ops


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dropout_forward_and_backward_through_the_triton_backend(served_by_interpreter, dtype):
    x = _input(3000, dtype).view(30, 100).requires_grad_()
    y = F.dropout(x, 0.3, seed=2**64 - 7, offset=9)
    threshold, _, scale = keep_scale(0.3)
    assert_bit_identical(y, reference.mask_scale(x.detach(), 2**64 - 7, 9, threshold, scale))
    grad = _input(3000, dtype, 1).view(30, 100)
    (dx,) = torch.autograd.grad(y, x, grad)
    # Backward regenerates the same mask on the gradient.
    assert_bit_identical(dx, reference.mask_scale(grad, 2**64 - 7, 9, threshold, scale))


def test_backend_name_reports_triton_for_served_tensors(served_by_interpreter):
    assert kernels.backend_name(torch.ones(3)) == "triton"
    assert kernels.backend_name(torch.ones(3, dtype=torch.int32)) != "triton"


@pytest.mark.parametrize("path", ["triton_op", "custom_op"])
def test_state_ops_forward_and_backward_read_the_state_on_the_device(served_by_interpreter, path):
    # Under torch.compile _ops.mask_scale is the torch.library.triton_op (run
    # eagerly here: tracing it needs a GPU); outside it (a CUDA-graph capture),
    # the custom op dropkit::mask_scale.
    op = _ops._triton_mask_scale(kt) if path == "triton_op" else _ops.mask_scale
    x = _input(2000, torch.float32).requires_grad_()
    state = _ops.make_state(2**63 + 5, 77)
    y = op(x, state, 20000, _scale(20000))
    assert_bit_identical(y, reference.mask_scale(x.detach(), 2**63 + 5, 77, 20000, _scale(20000)))
    grad = torch.randn(2000)
    (dx,) = torch.autograd.grad(y, x, grad)
    assert_bit_identical(dx, reference.mask_scale(grad, 2**63 + 5, 77, 20000, _scale(20000)))
    expected = "mask_scale_triton" if path == "triton_op" else "dropkit_mask_scale_default"
    assert expected in y.grad_fn.name()


def test_inplace_custom_op_matches_out_of_place(served_by_interpreter):
    x = _input(500, torch.bfloat16)
    state = _ops.make_state(1, 2)
    expected = _ops.mask_scale(x, state, 40000, _scale(40000))
    y = x.clone()
    _ops.mask_scale_inplace(y, state, 40000, _scale(40000))
    assert_bit_identical(y, expected)


# ------------------------------------------------------------------ reference on a state tensor


@settings(max_examples=20, deadline=None)
@given(seed=_u64, offset=_u64, numel=st.integers(1, 200), threshold=st.integers(0, 65536))
def test_reference_state_path_matches_the_int_path(seed, offset, numel, threshold):
    x = _input(numel, torch.float32)
    assert_bit_identical(
        reference.mask_scale_state(x, _ops.make_state(seed, offset), threshold, _scale(threshold)),
        reference.mask_scale(x, seed, offset, threshold, _scale(threshold)),
    )


# ------------------------------------------------------------------ dispatch


def test_dispatch_picks_triton_only_for_cuda_tensors_of_served_dtypes(monkeypatch):
    # triton_backend reads only .device and .dtype: a stand-in reaches the CUDA
    # branch on a machine without a GPU (importing triton works without one).
    def tensor(device, dtype):
        return types.SimpleNamespace(device=torch.device(device), dtype=dtype)

    monkeypatch.setattr(kernels, "_triton_mode", "")
    backend = kernels.triton_backend(tensor("cuda", torch.bfloat16))
    assert backend is not None and backend.__name__ == "dropkit.kernels.triton"
    assert kernels.triton_backend(tensor("cuda", torch.int64)) is None
    assert kernels.triton_backend(tensor("cpu", torch.float32)) is None
    monkeypatch.setattr(kernels, "_triton_mode", "0")
    assert kernels.triton_backend(tensor("cuda", torch.float32)) is None


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120
    )


def test_import_dropkit_does_not_import_triton_and_bad_setting_is_named():
    done = _run(
        "import sys, torch, dropkit\n"
        "dropkit.functional.dropout(torch.ones(8), 0.5, seed=0)\n"
        "dropkit.functional.bias_dropout_add(torch.ones(2, 4), torch.ones(4), torch.ones(2, 4),"
        " 0.5, seed=0)\n"
        "print('triton' in sys.modules)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    bad = _run("import dropkit", DROPKIT_TRITON="yes")
    assert bad.returncode != 0 and "DROPKIT_TRITON" in bad.stderr and "'yes'" in bad.stderr


# ------------------------------------------------------------------ fused bias_dropout_add


def _fused_inputs(dtype, shape=(6, 50), seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(dtype)
    bias = torch.randn(shape[-1], generator=gen).to(dtype)
    residual = torch.randn(shape, generator=gen).to(dtype)
    edge = min(4, shape[-1])
    x[0, :edge] = torch.tensor([0.0, -0.0, 1e-40, -3.0][:edge]).to(dtype)
    bias[:edge] = torch.tensor([-0.0, 0.0, 0.0, 3.0][:edge]).to(dtype)  # x + bias hits +-0
    return x, bias, residual


def _unfused(x, bias, residual, p, activation, seed, offset):
    h = x + bias
    if activation == "relu":
        h = torch.relu(h)
    elif activation == "gelu":
        h = torch.nn.functional.gelu(h)
    return residual + F.dropout(h, p, seed=seed, offset=offset)


def _forward_backward(fn, x, bias, residual, grad):
    leaves = [t.detach().clone().requires_grad_() for t in (x, bias, residual)]
    out = fn(*leaves)
    return (out, *torch.autograd.grad(out, leaves, grad))


@pytest.mark.parametrize("activation", [None, "relu"])
def test_fused_float32_is_bit_identical_to_the_unfused_chain(served_by_interpreter, activation):
    x, bias, residual = _fused_inputs(torch.float32)
    grad = torch.randn(x.shape)
    kwargs = dict(activation=activation, seed=2**64 - 1, offset=3)
    fused = _forward_backward(
        lambda a, b, c: F.bias_dropout_add(a, b, c, 0.4, **kwargs), x, bias, residual, grad
    )
    chain = _forward_backward(
        lambda a, b, c: _unfused(a, b, c, 0.4, activation, 2**64 - 1, 3), x, bias, residual, grad
    )
    assert "BiasDropoutAdd" in type(
        F.bias_dropout_add(x.requires_grad_(), bias, residual, 0.4, **kwargs).grad_fn
    ).__name__
    # out, grad x, grad bias (the same sum_to_size reduction), grad residual.
    for a, b in zip(fused, chain, strict=True):
        assert_bit_identical(a, b)


@pytest.mark.parametrize("hidden", [1, 3, 8, 24, 100, 129, 1000, 4104])
def test_fused_kernels_find_the_bias_column_across_many_small_blocks(hidden):
    # block=64: the tile's columns wrap around the hidden size zero to many times;
    # multiples of 8 take the one-modulo-per-Philox-row path.
    x, bias, residual = _fused_inputs(torch.float32, shape=(7, hidden), seed=hidden)
    grad = torch.randn(x.shape)
    threshold, _, scale = keep_scale(0.25)
    key = dict(seed=2**64 - 5, offset=6, block=64)
    out = kt.bias_dropout_add_forward(x, bias, residual, threshold, scale, 1, **key)
    grad_x = kt.bias_dropout_add_backward(grad, x, bias, threshold, scale, 1, **key)
    keep = keep_mask(x.shape, threshold, 2**64 - 5, 6)
    h = torch.relu(x + bias)
    assert_bit_identical(out, residual + reference._apply(h, keep, scale))
    masked = reference._apply(grad, keep, scale)
    assert_bit_identical(grad_x, torch.where(x + bias <= 0, 0.0, masked))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
def test_fused_drops_the_same_positions_and_agrees_within_rounding(
    served_by_interpreter, dtype, activation
):
    x, bias, residual = _fused_inputs(dtype, seed=1)
    grad = torch.randn(x.shape).to(dtype)
    fused = _forward_backward(
        lambda a, b, c: F.bias_dropout_add(a, b, c, 0.5, activation=activation, seed=42),
        x, bias, residual, grad,
    )
    chain = _forward_backward(
        lambda a, b, c: _unfused(a, b, c, 0.5, activation, 42, 0), x, bias, residual, grad
    )
    threshold, _, _ = keep_scale(0.5)
    dropped = ~keep_mask(x.shape, threshold, 42, 0)
    # Dropped positions: out is exactly the residual, the gradient into x exactly 0.
    assert_bit_identical(fused[0][dropped], residual[dropped])
    assert torch.equal(fused[1][dropped], torch.zeros_like(fused[1][dropped]))
    assert torch.equal(chain[1][dropped], torch.zeros_like(chain[1][dropped]))
    # Kept positions: the fused kernel rounds once (float32 math) where the
    # chain rounds after every op; each chain rounding is <= 1/2 ulp of its
    # result, a handful in all. GELU's erf comes from numpy under the
    # interpreter and from torch in the chain: a few float32 ulp apart.
    tolerance = {torch.float32: 1e-6, torch.bfloat16: 2e-2, torch.float16: 3e-3}[dtype]
    for a, b in zip(fused, chain, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=tolerance, atol=tolerance * 4)


@pytest.mark.parametrize("activation", [None, "gelu"])
def test_fused_compile_path_custom_ops_match_the_eager_function(served_by_interpreter, activation):
    # Under torch.compile the fused op is the custom ops dropkit::bias_dropout_add(_backward)
    # with the state on the device; tracing needs a GPU, so call them eagerly here.
    x, bias, residual = _fused_inputs(torch.bfloat16)
    grad = torch.randn(x.shape).to(torch.bfloat16)
    threshold, _, scale = keep_scale(0.3)
    code = _fused._ACTIVATION_CODES[activation]
    state = _ops.make_state(2**63 + 1, 4)
    eager = _forward_backward(
        lambda a, b, c: F.bias_dropout_add(a, b, c, 0.3, activation=activation, seed=2**63 + 1,
                                           offset=4),
        x, bias, residual, grad,
    )
    as_op = _forward_backward(
        lambda a, b, c: _fused._fused_op(a, b, c, state, threshold, scale, code),
        x, bias, residual, grad,
    )
    for a, b in zip(as_op, eager, strict=True):
        assert_bit_identical(a, b)


def test_fused_saves_no_mask(served_by_interpreter):
    x, bias, residual = (t.requires_grad_() for t in _fused_inputs(torch.float32))
    saved: dict[str, int] = {}
    for activation in (None, "gelu"):
        fresh = []

        def pack(tensor, fresh=fresh):
            if all(tensor.data_ptr() != t.data_ptr() for t in (x, bias, residual)):
                fresh.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            F.bias_dropout_add(x, bias, residual, 0.5, activation=activation)
        saved[str(activation)] = sum(fresh)
    # The Python-int key lives on the node; only the inputs themselves are saved.
    assert saved == {"None": 0, "gelu": 0}


def test_fused_unseeded_follows_torch_manual_seed(served_by_interpreter):
    x, bias, residual = _fused_inputs(torch.float32)
    torch.manual_seed(5)
    fused = F.bias_dropout_add(x, bias, residual, 0.5, activation="relu")
    torch.manual_seed(5)
    chain = _unfused(x, bias, residual, 0.5, "relu", None, 0)
    assert_bit_identical(fused, chain)


def test_fused_inference_and_p_zero_are_the_plain_sum():
    x, bias, residual = _fused_inputs(torch.float32)
    expected = residual + torch.relu(x + bias)
    assert torch.equal(F.bias_dropout_add(x, bias, residual, 0.5, False, activation="relu"),
                       expected)
    assert torch.equal(F.bias_dropout_add(x, bias, residual, 0.0, activation="relu"), expected)


def test_fused_on_cpu_is_the_composition():
    x, bias, residual = _fused_inputs(torch.float64)
    fused = F.bias_dropout_add(x, bias, residual, 0.3, activation="gelu", seed=9, offset=2)
    assert_bit_identical(fused, _unfused(x, bias, residual, 0.3, "gelu", 9, 2))


def test_fused_bad_input_names_the_values():
    x, bias, residual = _fused_inputs(torch.float32)
    with pytest.raises(ValueError, match=r"bias of shape \(7,\).*x of shape \(6, 50\)"):
        F.bias_dropout_add(x, torch.ones(7), residual, 0.5)
    with pytest.raises(ValueError, match=r"bias of shape \(1, 50\)"):
        F.bias_dropout_add(x, torch.ones(1, 50), residual, 0.5)
    with pytest.raises(ValueError, match=r"residual of shape \(6, 49\).*\(6, 50\)"):
        F.bias_dropout_add(x, bias, torch.ones(6, 49), 0.5)
    with pytest.raises(ValueError, match=r"\(None, 'relu', 'gelu'\).*'tanh'"):
        F.bias_dropout_add(x, bias, residual, 0.5, activation="tanh")
    with pytest.raises(ValueError, match=r"x on cpu, bias on meta, residual on cpu"):
        F.bias_dropout_add(x, bias.to("meta"), residual, 0.5)
    with pytest.raises(TypeError, match=r"bias torch.float64"):
        F.bias_dropout_add(x, bias.double(), residual, 0.5)
    with pytest.raises(ValueError, match="between 0 and 1, but got 1.5"):
        F.bias_dropout_add(x, bias, residual, 1.5)


def test_module_wraps_the_functional_op():
    layer = dropkit.BiasDropoutAdd(0.25, activation="gelu", seed=3)
    assert repr(layer) == "BiasDropoutAdd(p=0.25, activation='gelu')"
    x, bias, residual = _fused_inputs(torch.float32)
    assert torch.equal(
        layer(x, bias, residual),
        F.bias_dropout_add(x, bias, residual, 0.25, activation="gelu", seed=3),
    )
    layer.eval()
    assert torch.equal(layer(x, bias, residual), residual + torch.nn.functional.gelu(x + bias))
    with pytest.raises(ValueError, match="'swish'"):
        dropkit.BiasDropoutAdd(0.1, activation="swish")
