"""The native CPU kernel must reproduce ``dropkit/kernels/reference.py`` bit for bit.

Every instruction-set path (``portable`` always, ``avx2`` and ``avx512`` where
the CPU has them; the others skip with the reason) is checked against the
reference for every dtype, full 64-bit seeds and offsets, thresholds including
0 and 65536, sizes around the 8-lane block and the 64-element (AVX2) and
128-element (AVX-512) group boundaries, and 1 vs 2 threads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dropkit
from dropkit import kernels
from dropkit.kernels import reference
from tests.kernels.bitwise import assert_bit_identical, bits
from tests.kernels.subprocess_run import run_python

native = kernels.native_module()
needs_native = pytest.mark.skipif(native is None, reason="native kernel not built/disabled")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Sizes at the edges of a Philox block (8), an AVX2 group (64), an AVX-512
# group (128) and a work chunk (32768); the parallel cut-over (2**21) has its own
# test, against the one-thread kernel rather than the slow reference.
EDGE_SIZES = [0, 1, 7, 8, 9, 63, 64, 65, 127, 128, 129, 255, 1000, 32769, 65535, 65536, 65537]
EDGE_SIZES += [131073]
ISAS = ["portable", "avx2", "avx512"]
THRESHOLDS = [0, 1, 2, 32768, 52429, 65535, 65536]
# DK_PARALLEL_MIN in _native.c: below it one thread does a whole call.
PARALLEL_MIN = 1 << 21


def _isa_params() -> list:
    """One test id per instruction set, skipped with a reason where it cannot run."""
    params = []
    for isa in ISAS:
        if native is None:
            reason = "native kernel not built/disabled"
        elif isa not in native.available_isas():
            reason = f"this CPU (or build) has no {isa} path; available: {native.available_isas()}"
        else:
            reason = ""
        skip = pytest.mark.skipif(bool(reason), reason=reason)
        params.append(pytest.param(isa, id=isa, marks=skip))
    return params


def _input(numel: int, dtype: torch.dtype, data_seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(data_seed)
    x = torch.randn(numel, generator=gen, dtype=torch.float64) * 4
    if numel >= 16:
        # Values whose scaling overflows, underflows into subnormals, or that
        # are special: rounding paths the reference takes too.
        specials = torch.tensor(
            [
                0.0,
                -0.0,
                float("inf"),
                float("-inf"),
                float("nan"),
                1e-40,
                -3e-8,
                6e-5,
                65504.0,
                3.3e38,
                -3.3e38,
                1.0,
                1.00390625,
                2.0**-24,
                2.0**-25,
                0.5,
            ],
            dtype=torch.float64,
        )
        x[: specials.numel()] = specials
    return x.to(dtype)


def _native_call(x, out, seed, offset, threshold, scale, threads):
    native.mask_scale(
        x.data_ptr(),
        out.data_ptr(),
        x.numel(),
        kernels._DTYPE_CODES[x.dtype],
        seed,
        offset,
        threshold,
        scale,
        threads,
    )
    return out


def _scale(threshold: int) -> float:
    return 65536 / threshold if threshold else 0.0


@pytest.fixture
def isa_restored():
    yield
    if native is not None:
        native.set_isa("auto")


@needs_native
@pytest.mark.parametrize("isa", _isa_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    numel=st.one_of(st.sampled_from(EDGE_SIZES), st.integers(0, 3000)),
    seed=st.integers(0, 2**64 - 1),
    offset=st.integers(0, 2**64 - 1),
    threshold=st.one_of(st.sampled_from(THRESHOLDS), st.integers(0, 65536)),
    data_seed=st.integers(0, 2**31),
)
def test_bit_identical_to_reference(
    isa_restored, isa, dtype, numel, seed, offset, threshold, data_seed
):
    x = _input(numel, dtype, data_seed)
    scale = _scale(threshold)
    expected = reference.mask_scale(x, seed, offset, threshold, scale)
    assert native.set_isa(isa) == isa
    for threads in (1, 2):
        out = _native_call(x, torch.empty_like(x), seed, offset, threshold, scale, threads)
        assert_bit_identical(out, expected)
    inplace = x.clone()
    _native_call(inplace, inplace, seed, offset, threshold, scale, 2)
    assert_bit_identical(inplace, expected)


@needs_native
@pytest.mark.parametrize("isa", _isa_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tails_never_touch_memory_past_the_end(isa_restored, isa, dtype):
    # Ragged tails use masked (AVX-512) or buffered (AVX2) loads and stores:
    # every size up to two AVX-512 groups must match the reference and leave
    # the elements just past the end, and before the start, alone.
    native.set_isa(isa)
    pad = 40
    source = _input(256 + 2 * pad, dtype, 5)
    for numel in range(1, 257):
        x = source[pad : pad + numel]
        expected = reference.mask_scale(x, 9, 10, 30000, _scale(30000))
        buffer = torch.full((numel + 2 * pad,), 7.0, dtype=dtype)
        out = buffer[pad : pad + numel]
        _native_call(x, out, 9, 10, 30000, _scale(30000), 1)
        assert_bit_identical(out, expected)
        assert torch.all(buffer[:pad] == 7.0) and torch.all(buffer[pad + numel :] == 7.0), numel


@needs_native
def test_best_isa_is_the_default_and_each_can_be_forced(isa_restored):
    available = native.available_isas()
    assert available[0] == "portable" and set(available) <= set(ISAS)
    assert list(available) == ISAS[: len(available)]  # preference order: avx512 > avx2 > portable
    assert native.set_isa("auto") == available[-1]
    assert kernels.backend_name(torch.empty(3)) == f"native-{available[-1]}"
    for isa in available:
        assert native.set_isa(isa) == isa and native.isa() == isa
        assert kernels.backend_name(torch.empty(3)) == f"native-{isa}"


@needs_native
@pytest.mark.parametrize("isa", _isa_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_multi_chunk_tensor_with_extreme_seed_and_offset(isa_restored, isa, dtype):
    # Several work chunks, a ragged tail, and all-ones / top-bit key and
    # counter words (sign-extension mistakes would show up here).
    x = _input(200_003, dtype, 7)
    seed, offset, threshold = 2**64 - 1, 2**63 + 12345, 40000
    expected = reference.mask_scale(x, seed, offset, threshold, _scale(threshold))
    native.set_isa(isa)
    out = _native_call(x, torch.empty_like(x), seed, offset, threshold, _scale(threshold), 2)
    assert_bit_identical(out, expected)


@needs_native
def test_dispatch_uses_native_on_cpu_and_matches_reference():
    assert kernels.backend_name(torch.empty(3)).startswith("native-")
    assert kernels.backend_name(torch.empty(3, dtype=torch.int32)) == "reference"
    x = torch.randn(4, 5, 6)
    assert_bit_identical(
        kernels.mask_scale(x, 3, 4, 30000, _scale(30000)),
        reference.mask_scale(x, 3, 4, 30000, _scale(30000)),
    )


@needs_native
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_inputs_follow_row_major_order(dtype):
    base = _input(2 * 3 * 40 * 50, dtype, 3).reshape(2, 3, 40, 50)
    views = {
        "transposed": base.transpose(1, 3),
        "sliced": base[:, :, ::3, 1:],
        "channels_last": base.contiguous(memory_format=torch.channels_last),
    }
    for name, view in views.items():
        assert not view.is_contiguous(), name
        expected = reference.mask_scale(view.contiguous(), 11, 12, 40000, _scale(40000))
        assert_bit_identical(kernels.mask_scale(view, 11, 12, 40000, _scale(40000)), expected)
        target = view.clone(memory_format=torch.preserve_format)
        if name == "channels_last":
            assert not target.is_contiguous()
        else:
            target = (
                base.clone().transpose(1, 3)
                if name == "transposed"
                else base.clone()[:, :, ::3, 1:]
            )
        kernels.mask_scale_(target, 11, 12, 40000, _scale(40000))
        assert_bit_identical(target.contiguous(), expected)


@needs_native
@pytest.mark.parametrize("isa", _isa_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_parallel_cut_over_equals_one_thread(isa_restored, isa, dtype):
    assert native.set_isa(isa) == isa
    for numel in (PARALLEL_MIN - 1, PARALLEL_MIN, PARALLEL_MIN + 129):
        x = _input(numel, dtype, numel)
        one = _native_call(x, torch.empty_like(x), 3, 4, 40000, _scale(40000), 1)
        for threads in (2, 3):
            assert_bit_identical(
                _native_call(x, torch.empty_like(x), 3, 4, 40000, _scale(40000), threads), one)
    # And the one-thread kernel is the reference, at the largest size.
    assert_bit_identical(one, reference.mask_scale(x, 3, 4, 40000, _scale(40000)))


@needs_native
def test_public_dropout_same_on_one_and_two_threads():
    previous = torch.get_num_threads()
    x = torch.randn(PARALLEL_MIN + 1)  # above the cut-over: the pool runs
    try:
        torch.set_num_threads(1)
        one = dropkit.functional.dropout(x, 0.3, seed=5, offset=9)
        torch.set_num_threads(2)
        two = dropkit.functional.dropout(x, 0.3, seed=5, offset=9)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(bits(one), bits(two))


@needs_native
def test_backward_regenerates_the_forward_mask():
    x = torch.randn(100_000, dtype=torch.float64, requires_grad=True)
    y = dropkit.functional.dropout(x, 0.4, seed=21)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    kept = y != 0
    scale = _scale(round(0.6 * 65536))
    # d y_i / d x_i is the survivor scale where kept and 0 where dropped.
    assert torch.equal(x.grad[kept], upstream[kept] * scale)
    assert torch.count_nonzero(x.grad[~kept]) == 0


@needs_native
def test_concurrent_python_threads_get_correct_results():
    # The GIL is released; a second caller finds the pool busy and runs serially.
    x = torch.randn(PARALLEL_MIN + 3)
    expected = reference.mask_scale(x, 77, 1, 20000, _scale(20000))
    failures = []

    def work():
        for _ in range(5):
            out = kernels.mask_scale(x, 77, 1, 20000, _scale(20000))
            if not torch.equal(bits(out), bits(expected)):
                failures.append(1)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures and not any(thread.is_alive() for thread in threads)


@pytest.mark.parametrize("isa", _isa_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    numel=st.one_of(st.sampled_from([0, 1, 7, 9, 65, 129, 3136, 40000]), st.integers(0, 600)),
    seeds=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=4),
    offsets=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=5),
    threshold=st.one_of(st.sampled_from(THRESHOLDS), st.integers(0, 65536)),
    data_seed=st.integers(0, 2**31),
)
def test_streams_call_equals_one_call_per_stream(
    isa_restored, isa, dtype, numel, seeds, offsets, threshold, data_seed
):
    # The batched call is what Monte Carlo sampling uses: one kernel call for
    # T x rows streams must give every stream the bits of its own call.
    x = _input(len(seeds) * len(offsets) * numel, dtype, data_seed)
    x = x.view(len(seeds), len(offsets), numel)
    scale = _scale(threshold)
    expected = reference.mask_scale_streams(x, seeds, offsets, threshold, scale)
    for t, seed in enumerate(seeds):
        for r, offset in enumerate(offsets):
            assert_bit_identical(
                expected[t, r], reference.mask_scale(x[t, r], seed, offset, threshold, scale)
            )
    assert native.set_isa(isa) == isa
    before = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            actual = kernels.mask_scale_streams(x, seeds, offsets, threshold, scale)
        finally:
            torch.set_num_threads(before)
        assert_bit_identical(actual, expected)


def test_streams_call_checks_the_shape():
    with pytest.raises(ValueError, match=r"shape \(2, 3, ...\) for 2 seeds and 3 offsets"):
        kernels.mask_scale_streams(torch.ones(3, 2, 4), [1, 2], [0, 1, 2], 100, 1.0)


@needs_native
def test_bad_arguments_are_reported():
    x = torch.ones(4)
    with pytest.raises(ValueError, match="threshold must be in \\[0, 65536\\], got 70000"):
        native.mask_scale(x.data_ptr(), x.data_ptr(), 4, 0, 0, 0, 70000, 1.0, 1)
    with pytest.raises(ValueError, match="dtype_code must be 0..3, got 9"):
        native.mask_scale(x.data_ptr(), x.data_ptr(), 4, 9, 0, 0, 1, 1.0, 1)
    with pytest.raises(ValueError, match="numel must be >= 0, got -1"):
        native.mask_scale(x.data_ptr(), x.data_ptr(), -1, 0, 0, 0, 1, 1.0, 1)
    with pytest.raises(ValueError, match="null data pointer"):
        native.mask_scale(0, 0, 4, 0, 0, 0, 1, 1.0, 1)
    with pytest.raises(ValueError, match="n_seeds and n_offsets must be >= 0, got 4, -1, 1"):
        native.mask_scale_streams(x.data_ptr(), x.data_ptr(), 4, 0, 1, -1, 1, 1, 1, 1.0, 1)
    with pytest.raises(ValueError, match="null pointer for 1 x 1 streams"):
        native.mask_scale_streams(x.data_ptr(), x.data_ptr(), 4, 0, 0, 1, 0, 1, 1, 1.0, 1)
    allowed = "'auto', 'portable', 'avx2' or 'avx512'"
    with pytest.raises(ValueError, match=f"isa must be {allowed}, got 'sse9'"):
        native.set_isa("sse9")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@needs_native
def test_forked_child_can_use_the_kernel():
    # libgomp hangs a child that enters OpenMP after the parent did; the
    # kernel's own pool must be rebuilt in the child instead.
    x = torch.randn(PARALLEL_MIN + 5)  # large enough for the pool
    parent = kernels.mask_scale(x, 1, 2, 30000, _scale(30000))
    script = "\n".join(
        [
            "import os, sys, torch",
            "from dropkit import kernels",
            f"x = torch.randn({PARALLEL_MIN + 5})",
            "kernels.mask_scale(x, 1, 2, 30000, 65536 / 30000)  # parent warms its pool",
            "pid = os.fork()",
            "if pid == 0:",
            "    torch.set_num_threads(2)",
            "    y = kernels.mask_scale(x, 1, 2, 30000, 65536 / 30000)",
            "    os._exit(0 if int((y != 0).sum()) > 0 else 3)",
            "_, status = os.waitpid(pid, 0)",
            "sys.exit(os.waitstatus_to_exitcode(status))",
        ]
    )
    result = subprocess.run([sys.executable, "-c", script], timeout=120, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    assert parent.shape == x.shape


_COMPARE = """
import torch, warnings
from dropkit import kernels
from dropkit.kernels import reference
x = torch.randn(1000)
y = kernels.mask_scale(x, 5, 6, 30000, 65536 / 30000)
kernels.mask_scale(x, 5, 6, 30000, 65536 / 30000)
assert torch.equal(y, reference.mask_scale(x, 5, 6, 30000, 65536 / 30000))
print(kernels.backend_name(x))
"""


def test_env_var_zero_forces_reference_without_warning():
    result = run_python(_COMPARE, DROPKIT_NATIVE="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reference"
    assert "RuntimeWarning" not in result.stderr


def test_missing_module_falls_back_with_one_warning():
    # A None entry in sys.modules makes the import fail, as on a machine
    # where the extension was never compiled.
    code = "import sys; sys.modules['dropkit.kernels._native'] = None\n" + _COMPARE
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reference"
    assert result.stderr.count("native CPU kernel unavailable") == 1, result.stderr


def test_env_var_one_requires_the_native_module():
    code = "import sys; sys.modules['dropkit.kernels._native'] = None\nimport dropkit"
    result = run_python(code, DROPKIT_NATIVE="1")
    assert result.returncode != 0
    assert "DROPKIT_NATIVE=1 requires dropkit's compiled kernel" in result.stderr


def test_env_var_rejects_unknown_values():
    result = run_python("import dropkit", DROPKIT_NATIVE="fast")
    assert result.returncode != 0
    assert "DROPKIT_NATIVE has to be one of" in result.stderr and "'fast'" in result.stderr


def test_native_kernel_is_built_where_a_compiler_exists():
    # Guards against the optional build failing silently in CI: the package
    # would still work, but slowly, and every native test above would skip.
    if os.environ.get("DROPKIT_NATIVE", "").strip() == "0":
        pytest.skip("DROPKIT_NATIVE=0 disables the native kernel")
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) on this machine")
    assert native is not None, "C compiler present but dropkit.kernels._native is missing"
