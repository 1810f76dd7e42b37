"""The Triton backend on a real GPU: the contract across devices, compile, CUDA graphs.

Everything here skips without CUDA. What it proves that the interpreter tests
cannot: the compiled kernels (hardware bfloat16 rounding, 64-bit indexing past
2**31 elements) give the CPU reference's bits; ``torch.compile`` keeps the op
one graph with no host sync; an unseeded dropout captured in a CUDA graph
draws a fresh mask on every replay; the fused ``bias_dropout_add`` equals the
unfused chain; and the CUDA paths of the rest of dropkit (the reference
kernel, ``WeightDrop`` under cuDNN) still work. Run by ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

import dropkit  # noqa: E402
from dropkit import _ops, kernels  # noqa: E402
from dropkit import functional as F  # noqa: E402
from dropkit.kernels import reference  # noqa: E402
from dropkit.random import keep_mask, keep_scale, philox4x32  # noqa: E402
from tests.kernels.bitwise import assert_bit_identical  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
KEYS = [(0, 0, 32768), (2**64 - 1, 2**63 + 11, 40000), (2**31, 5, 1), (77, 2**40, 65535)]


@pytest.fixture(scope="module")
def kt():
    pytest.importorskip("triton")
    from dropkit.kernels import triton as module

    assert not module.INTERPRETED, "TRITON_INTERPRET is set: these tests need compiled kernels"
    return module


def _input(numel: int, dtype: torch.dtype, data_seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(data_seed)
    x = torch.randn(numel, generator=gen, dtype=torch.float64) * 4
    edge = [float("inf"), float("-inf"), float("nan"), -0.0, 1e-40, -1e-40, 1e-45, 3e38, 7e4]
    x[: len(edge)] = torch.tensor(edge, dtype=torch.float64)
    return x.to(dtype)


def _scale(threshold: int) -> float:
    return 65536 / threshold if threshold else 0.0


def test_cuda_tensors_are_served_by_triton(kt):
    assert kernels.backend_name(torch.ones(4, device="cuda")) == "triton"
    assert kernels.backend_name(torch.ones(4, device="cuda", dtype=torch.int32)) == "reference"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed, offset, threshold", KEYS)
def test_gpu_mask_equals_the_cpu_reference(kt, dtype, seed, offset, threshold):
    # The contract: the same seed gives the same bits on any GPU and on the CPU.
    x = _input((1 << 20) + 13, dtype)
    expected = reference.mask_scale(x, seed, offset, threshold, _scale(threshold))
    on_gpu = x.cuda()
    assert_bit_identical(kt.mask_scale(on_gpu, seed, offset, threshold, _scale(threshold)),
                          expected)
    kt.mask_scale_(on_gpu, seed, offset, threshold, _scale(threshold))
    assert_bit_identical(on_gpu, expected)
    state = _ops.make_state(seed, offset, "cuda")
    assert_bit_identical(
        kt.mask_scale_state(x.cuda(), state, threshold, _scale(threshold)), expected
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reference_on_cuda_equals_the_reference_on_cpu(dtype):
    x = _input(100_003, dtype)
    expected = reference.mask_scale(x, 3, 4, 30000, _scale(30000))
    assert_bit_identical(reference.mask_scale(x.cuda(), 3, 4, 30000, _scale(30000)), expected)
    state = _ops.make_state(3, 4, "cuda")
    assert_bit_identical(
        reference.mask_scale_state(x.cuda(), state, 30000, _scale(30000)), expected
    )


def test_bf16_hardware_and_integer_rounding_agree(kt, monkeypatch):
    x = _input(1 << 20, torch.float32)
    x[9:4096] = torch.logspace(-45, 38, 4087, base=10.0)  # subnormals through overflow
    x = x.to(torch.bfloat16).cuda()
    hardware = kt.mask_scale(x, 5, 6, 40000, _scale(40000))
    monkeypatch.setattr(kt, "BF16_INTEGER_ROUNDING", True)
    assert_bit_identical(kt.mask_scale(x, 5, 6, 40000, _scale(40000)), hardware)


def test_streams_on_gpu_equal_the_cpu_reference(kt):
    x = _input(4 * 3 * 1000, torch.bfloat16).view(4, 3, 1000)
    seeds, offsets = [1, 2**64 - 1, 2**33, 9], [0, 2**63, 5]
    assert_bit_identical(
        kt.mask_scale_streams(x.cuda(), seeds, offsets, 30000, _scale(30000)),
        reference.mask_scale_streams(x, seeds, offsets, 30000, _scale(30000)),
    )


def test_block_counter_carry_on_gpu(kt):
    x = _input(4096 * 3, torch.float32)
    first = 2**32 - 700
    out = kt._launch_mask(x.cuda(), torch.empty_like(x).cuda(), 40000, _scale(40000),
                          seed=11, offset=2**33, block_base=first)
    blocks = torch.arange(x.numel() // 8, dtype=torch.int64) + first
    counter = torch.stack((blocks & 0xFFFFFFFF, blocks >> 32, torch.full_like(blocks, 0),
                           torch.full_like(blocks, 2)), -1)
    words = philox4x32(counter, torch.tensor([11, 0]))
    lanes = torch.stack((words & 0xFFFF, words >> 16), -1).reshape(-1)
    assert_bit_identical(out, reference._apply(x, lanes < 40000, _scale(40000)))


def test_indices_past_2_to_the_31(kt):
    # 64-bit element indices: the tail of a 2**31 + 1000 element fp16 tensor (4 GiB).
    numel = (1 << 31) + 1000
    x = torch.ones(numel, dtype=torch.float16, device="cuda")
    out = kt.mask_scale(x, 8, 9, 32768, 2.0)
    tail = 4096
    first_block = (numel - tail) // 8
    blocks = torch.arange(first_block, first_block + tail // 8, dtype=torch.int64)
    counter = torch.stack((blocks & 0xFFFFFFFF, blocks >> 32, torch.full_like(blocks, 9),
                           torch.zeros_like(blocks)), -1)
    words = philox4x32(counter, torch.tensor([8, 0]))
    lanes = torch.stack((words & 0xFFFF, words >> 16), -1).reshape(-1)
    expected = reference._apply(torch.ones(tail, dtype=torch.float16), lanes < 32768, 2.0)
    assert_bit_identical(out[-tail:], expected)
    del x, out


# ------------------------------------------------------------------ torch.compile


def test_compiled_dropout_is_one_graph_without_host_syncs(kt):
    x = torch.randn(1 << 16, device="cuda", requires_grad=True)
    seeded = torch.compile(lambda t: F.dropout(t, 0.5, seed=3) * 2, fullgraph=True)
    unseeded = torch.compile(lambda t: F.dropout(t, 0.5) * 2, fullgraph=True)
    expected = F.dropout(x, 0.5, seed=3) * 2
    assert_bit_identical(seeded(x), expected)
    unseeded(x)  # compile outside the sync check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = unseeded(x)
        z = seeded(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_bit_identical(z, expected)
    kept = y != 0
    assert torch.equal(y[kept], (x * 4)[kept])  # survivors x * 2 (scale) * 2
    (grad,) = torch.autograd.grad(z.sum(), x)
    assert_bit_identical(grad, (expected != 0).float() * 4)


def test_compiled_fused_op_matches_eager(kt):
    x, bias, residual = (torch.randn(64, 256, device="cuda") for _ in range(3))
    bias = bias[0]
    compiled = torch.compile(
        lambda a, b, c: F.bias_dropout_add(a, b, c, 0.1, activation="relu", seed=5),
        fullgraph=True,
    )
    assert_bit_identical(
        compiled(x, bias, residual),
        F.bias_dropout_add(x, bias, residual, 0.1, activation="relu", seed=5),
    )


# ------------------------------------------------------------------ CUDA graphs


def _capture(fn):
    """Warm ``fn`` up on a side stream (as torch's docs require), then capture it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def test_unseeded_dropout_in_a_cuda_graph_draws_a_fresh_mask_per_replay(kt):
    x = torch.randn(1 << 16, device="cuda")
    graph, out = _capture(lambda: F.dropout(x, 0.5))
    masks = []
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        masks.append(out != 0)
        kept = masks[-1]
        assert torch.equal(out[kept], (x * 2)[kept])
    # Two independent masks at p = 0.5 agree on half the units; a frozen seed on all.
    for first, second in zip(masks, masks[1:], strict=False):
        agreement = (first == second).float().mean().item()
        assert abs(agreement - 0.5) < 6 * 0.5 / (x.numel() ** 0.5)


def test_seeded_dropout_in_a_cuda_graph_replays_its_mask(kt):
    x = torch.randn(1 << 16, device="cuda")
    graph, out = _capture(lambda: F.dropout(x, 0.5, seed=12))
    graph.replay()
    torch.cuda.synchronize()
    assert_bit_identical(out, F.dropout(x, 0.5, seed=12))


def test_unseeded_fused_op_in_a_cuda_graph_draws_a_fresh_mask(kt):
    x, residual = torch.randn(2, 256, 256, device="cuda")
    bias = torch.randn(256, device="cuda")
    graph, out = _capture(lambda: F.bias_dropout_add(x, bias, residual, 0.5))
    graph.replay()
    torch.cuda.synchronize()
    first = out != residual
    graph.replay()
    torch.cuda.synchronize()
    assert not torch.equal(first, out != residual)


def test_host_drawn_seed_inside_a_capture_raises(kt):
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="CUDA graph capture"):
        with torch.cuda.graph(graph):
            dropkit.random.draw_seed()


# ------------------------------------------------------------------ fused bias_dropout_add


def _unfused(x, bias, residual, p, activation, seed):
    h = x + bias
    h = {None: h, "relu": torch.relu(h), "gelu": torch.nn.functional.gelu(h)}[activation]
    return residual + F.dropout(h, p, seed=seed)


def _forward_backward(fn, *inputs):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return (out, *torch.autograd.grad(out, leaves, torch.ones_like(out) * 0.5))


@pytest.mark.parametrize("activation", [None, "relu"])
def test_fused_float32_on_gpu_is_bit_identical_to_the_chain_and_the_cpu(kt, activation):
    x, residual = torch.randn(2, 512, 1024, device="cuda")
    bias = torch.randn(1024, device="cuda")
    fused = _forward_backward(
        lambda a, b, c: F.bias_dropout_add(a, b, c, 0.1, activation=activation, seed=4),
        x, bias, residual,
    )
    chain = _forward_backward(lambda a, b, c: _unfused(a, b, c, 0.1, activation, 4),
                              x, bias, residual)
    on_cpu = _unfused(x.cpu(), bias.cpu(), residual.cpu(), 0.1, activation, 4)
    for a, b in zip(fused[:2], chain[:2], strict=True):
        assert_bit_identical(a, b)
    assert_bit_identical(fused[0], on_cpu)
    torch.testing.assert_close(fused[2], chain[2])  # bias grad: reductions may differ in order


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_fused_gelu_and_low_precision_drop_the_same_positions(kt, dtype):
    x, residual = torch.randn(2, 256, 1024, device="cuda").to(dtype)
    bias = torch.randn(1024, device="cuda").to(dtype)
    fused = F.bias_dropout_add(x, bias, residual, 0.3, activation="gelu", seed=8)
    chain = _unfused(x, bias, residual, 0.3, "gelu", 8)
    dropped = ~keep_mask(x.shape, keep_scale(0.3)[0], 8, 0, "cuda")
    assert_bit_identical(fused[dropped], residual[dropped])
    tolerance = {torch.float32: 1e-6, torch.bfloat16: 2e-2, torch.float16: 3e-3}[dtype]
    torch.testing.assert_close(fused.float(), chain.float(), rtol=tolerance, atol=4 * tolerance)


def test_fused_bad_devices_are_named(kt):
    x = torch.randn(4, 8, device="cuda")
    with pytest.raises(ValueError, match="bias on cpu"):
        F.bias_dropout_add(x, torch.randn(8), x, 0.5)


# ------------------------------------------------------------------ the rest of dropkit on CUDA


@torch.backends.cudnn.flags(enabled=True, allow_tf32=False)
def test_weight_drop_lstm_under_cudnn():
    lstm = dropkit.WeightDrop(torch.nn.LSTM(32, 64), ["weight_hh_l0"], p=0.5, seed=1).cuda()
    inputs = torch.randn(10, 4, 32, device="cuda")
    output, _ = lstm(inputs)
    output.sum().backward()
    grad = lstm.module.weight_hh_l0.grad
    # DropConnect: the gradient of a dropped weight is exactly zero.
    assert grad is not None and 0.3 < (grad == 0).float().mean().item() < 0.7
    cpu = dropkit.WeightDrop(torch.nn.LSTM(32, 64), ["weight_hh_l0"], p=0.5, seed=1)
    cpu.load_state_dict({k: v.cpu() for k, v in lstm.state_dict().items()})
    cpu_output, _ = cpu(inputs.cpu())
    torch.testing.assert_close(output.cpu(), cpu_output, rtol=1e-4, atol=1e-5)
