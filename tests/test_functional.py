"""dropkit.functional: the statistics, the contract and the errors of the core ops."""

import math

import pytest
import torch

import dropkit.functional as F
from dropkit.random import keep_mask, keep_threshold

FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _sd_of_rate(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.8])
def test_drop_rate_matches_p(p):
    n = 1 << 20
    y = F.dropout(torch.ones(n), p, seed=3)
    # The dropped fraction is binomial(n, p)/n; allow 6 standard deviations.
    assert abs((y == 0).double().mean().item() - p) < 6 * _sd_of_rate(p, n)


@pytest.mark.parametrize("p", [0.3, 0.5, 0.7])
def test_inverted_dropout_is_unbiased_under_the_quantised_keep_probability(p):
    x = torch.linspace(-2, 2, 1 << 20, dtype=torch.float64)
    threshold = keep_threshold(1 - p)
    q = threshold / 65536
    keep = keep_mask(x.shape, threshold, seed=9)
    y = F.dropout(x, p, seed=9)
    # Exactly the documented rule: kept elements are x * 2**16 / threshold.
    assert torch.equal(y, torch.where(keep, x * (65536 / threshold), torch.zeros(())))
    # E[y_i] = x_i: averaging y/x over n elements leaves sd sqrt((1-q)/q/n); 6 sd.
    ratio = (y / x)[x.abs() > 1e-3]
    assert abs(ratio.mean().item() - 1) < 6 * math.sqrt((1 - q) / q / ratio.numel())


def test_classic_mode_scales_at_inference_not_in_training():
    x = torch.full((1000,), 3.0)
    train = F.dropout(x, 0.25, mode="classic", seed=1)
    assert set(train.unique().tolist()) <= {0.0, 3.0}
    q = keep_threshold(0.75) / 65536
    assert torch.allclose(F.dropout(x, 0.25, training=False, mode="classic"), x * q)


def test_inverted_eval_and_p_zero_are_identity_without_drawing_random_numbers():
    x = torch.randn(64, 32)
    state = torch.get_rng_state()
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x
    assert torch.equal(torch.get_rng_state(), state)


def test_p_one_gives_zeros_not_nan():
    x = torch.randn(128, requires_grad=True)
    y = F.dropout(x, 1.0)
    assert torch.equal(y, torch.zeros(128)) and not torch.isnan(y).any()
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros(128))
    assert torch.equal(F.alpha_dropout(x.detach(), 1.0, True), torch.zeros(128))


def test_empty_tensors():
    assert F.dropout(torch.empty(0, 5), 0.5).shape == (0, 5)
    assert F.dropout2d(torch.empty(0, 3, 4, 4), 0.5).shape == (0, 3, 4, 4)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_every_float_dtype(dtype):
    x = torch.ones(4096, dtype=dtype)
    y = F.dropout(x, 0.5, seed=4)
    assert y.dtype == dtype
    assert set(y.float().unique().tolist()) == {0.0, 2.0}
    mask32 = F.dropout(torch.ones(4096), 0.5, seed=4) != 0
    assert torch.equal(y != 0, mask32)


def test_seeded_masks_are_reproducible_and_offsets_independent():
    x = torch.randn(1000)
    assert torch.equal(F.dropout(x, 0.5, seed=1), F.dropout(x, 0.5, seed=1))
    assert not torch.equal(F.dropout(x, 0.5, seed=1), F.dropout(x, 0.5, seed=1, offset=1))


def test_unseeded_masks_follow_torch_manual_seed():
    x = torch.randn(1000)
    torch.manual_seed(0)
    a, b = F.dropout(x), F.dropout(x)
    torch.manual_seed(0)
    assert torch.equal(a, F.dropout(x)) and torch.equal(b, F.dropout(x))
    assert not torch.equal(a, b)
    gen = torch.Generator().manual_seed(5)
    c = F.dropout(x, generator=gen)
    assert torch.equal(c, F.dropout(x, generator=torch.Generator().manual_seed(5)))


def test_same_mask_for_any_thread_count():
    x = torch.randn(300_001)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = F.dropout(x, 0.3, seed=77)
        torch.set_num_threads(2)
        two = F.dropout(x, 0.3, seed=77)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_mask_follows_logical_index_not_memory_layout():
    x = torch.randn(4, 3, 8, 8)
    reference = F.dropout(x, 0.5, seed=21)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(F.dropout(channels_last, 0.5, seed=21), reference)
    transposed = x.transpose(0, 3).contiguous().transpose(0, 3)
    assert torch.equal(F.dropout(transposed, 0.5, seed=21), reference)
    big = torch.randn(8, 3, 8, 8)
    view = big[::2]
    assert torch.equal(F.dropout(view, 0.5, seed=21), F.dropout(view.clone(), 0.5, seed=21))


def test_broadcast_dims_share_one_mask_value():
    x = torch.ones(6, 5, 7)
    y = F.dropout(x, 0.5, broadcast_dims=(1,), seed=2)
    assert torch.equal(y, y[:, :1, :].expand_as(y))
    z = F.dropout(x, 0.5, broadcast_dims=(-1, 0), seed=2)
    assert torch.equal(z, z[:1, :, :1].expand_as(z))
    with pytest.raises(
        ValueError, match="broadcast_dims entry 3 is not a dimension of a 3-D input"
    ):
        F.dropout(x, 0.5, broadcast_dims=(3,))


@pytest.mark.parametrize(
    "op, shape, spatial",
    [
        (F.dropout1d, (4, 16, 9), (2,)),
        (F.dropout1d, (16, 9), (1,)),
        (F.dropout2d, (4, 16, 5, 6), (2, 3)),
        (F.dropout2d, (16, 5, 6), (1, 2)),
        (F.dropout3d, (2, 16, 3, 4, 5), (2, 3, 4)),
    ],
)
def test_channelwise_ops_drop_whole_channels(op, shape, spatial):
    y = op(torch.ones(shape), 0.5, seed=6)
    flat = y.amax(dim=spatial)
    assert torch.equal(y.amin(dim=spatial), flat)
    assert 0 < (flat == 0).sum() < flat.numel()


@pytest.mark.parametrize(
    "op, shape, expected",
    [
        (
            F.dropout1d,
            (2, 3, 4, 5),
            "2-D \\(unbatched\\) or 3-D \\(batched\\) input, but got a 4-D",
        ),
        (F.dropout2d, (2, 3), "3-D \\(unbatched\\) or 4-D \\(batched\\) input, but got a 2-D"),
        (F.dropout3d, (2, 3, 4), "4-D \\(unbatched\\) or 5-D \\(batched\\) input, but got a 3-D"),
    ],
)
def test_channelwise_ops_name_the_expected_rank(op, shape, expected):
    with pytest.raises(ValueError, match=expected):
        op(torch.ones(shape), 0.5)


def test_spatial_dropout_channels_first_and_last():
    x = torch.ones(3, 10, 4, 4, 8)
    first = F.spatial_dropout(x, 0.5, seed=1)
    assert torch.equal(first, first[:, :, :1, :1, :1].expand_as(first))
    last = F.spatial_dropout(x, 0.5, channels_last=True, seed=1)
    assert torch.equal(last, last[:, :1, :1, :1, :].expand_as(last))
    with pytest.raises(ValueError, match=">= 3-D"):
        F.spatial_dropout(torch.ones(3, 4), 0.5)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), float("inf")])
def test_bad_p_is_named(p):
    with pytest.raises(ValueError, match=f"between 0 and 1, but got {p}"):
        F.dropout(torch.ones(3), p)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="got '0.5'"):
        F.dropout(torch.ones(3), "0.5")
    with pytest.raises(TypeError, match="floating-point tensor, but got dtype torch.int64"):
        F.dropout(torch.ones(3, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="mode has to be one of .* but got 'keras'"):
        F.dropout(torch.ones(3), 0.5, mode="keras")
    leaf = torch.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        F.dropout(leaf, 0.5, inplace=True)


def test_inplace_matches_out_of_place_and_backpropagates():
    base = torch.randn(1000, requires_grad=True)
    expected = F.dropout(base * 1.0, 0.4, seed=8)
    hidden = base * 1.0
    out = F.dropout(hidden, 0.4, seed=8, inplace=True)
    assert out is hidden and torch.equal(out, expected)
    out.sum().backward()
    keep = expected != 0
    assert torch.allclose(base.grad[keep], torch.full_like(base.grad[keep], 65536 / 39322))
    assert torch.equal(base.grad[~keep], torch.zeros_like(base.grad[~keep]))


def test_gradcheck_float64():
    x = torch.randn(40, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: F.dropout(t, 0.3, seed=5), (x,))
    assert torch.autograd.gradcheck(
        lambda t: F.dropout2d(t, 0.3, seed=5),
        (torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True),),
    )
    assert torch.autograd.gradcheck(lambda t: F.alpha_dropout(t, 0.3, True, seed=5), (x,))
    assert torch.autograd.gradgradcheck(lambda t: F.dropout(t, 0.3, seed=5), (x,))


def test_no_mask_is_saved_for_backward():
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    x = torch.randn(1 << 16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = F.dropout(x, 0.5, seed=1)
    # Eager mode keeps seed and offset as ints on the autograd node: no tensor at
    # all (the compiled op saves the 16-byte [seed, offset] state tensor).
    assert sum(saved) == 0
    y.sum().backward()


def test_alpha_dropout_keeps_zero_mean_unit_variance():
    n = 1 << 20
    x = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = F.alpha_dropout(x, 0.2, True, seed=3)
    # Self-normalising property (Klambauer et al., eq. 19-20). With n = 2**20 the
    # sample mean has sd ~1/sqrt(n) ~ 0.001 and the sample variance sd ~ sqrt(2/n)
    # times a small kurtosis factor (< 0.002): 1e-2 is more than 5 sd for both.
    assert abs(y.mean().item()) < 1e-2 and abs(y.var().item() - 1) < 1e-2
    assert torch.equal(F.alpha_dropout(x, 0.2, False), x)


def test_feature_alpha_dropout_shares_a_value_per_channel():
    x = torch.zeros(4, 6, 5, 5)
    y = F.feature_alpha_dropout(x, 0.5, True, seed=2)
    assert torch.equal(y, y[:, :, :1, :1].expand_as(y))
    assert y.unique().numel() == 2
    with pytest.raises(ValueError, match="at least 2-D"):
        F.feature_alpha_dropout(torch.zeros(3), 0.5, True)


def test_torch_compile_fullgraph_matches_eager_for_a_fixed_seed():
    x = torch.randn(512, 64)
    compiled = torch.compile(lambda t: F.dropout(t, 0.5, seed=3) * 2, fullgraph=True)
    assert torch.equal(compiled(x), F.dropout(x, 0.5, seed=3) * 2)
    unseeded = torch.compile(lambda t: F.dropout(t, 0.5), fullgraph=True)
    a, b = unseeded(x), unseeded(x)
    assert not torch.equal(a, b)
    # 32768 elements, binomial sd of the drop fraction ~0.0028; allow 6 sd.
    assert abs((a == 0).float().mean().item() - 0.5) < 0.017


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"seed": -1}, ValueError, r"seed must be in \[0, 2\*\*64\), got -1"),
        ({"seed": 2**64}, ValueError, r"seed must be in \[0, 2\*\*64\)"),
        ({"seed": 1.5}, TypeError, r"seed must be an int in \[0, 2\*\*64\), got 1.5"),
        ({"seed": 1, "offset": -3}, ValueError, r"offset must be in \[0, 2\*\*64\), got -3"),
    ],
)
def test_bad_seed_or_offset_is_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        F.dropout(torch.ones(4), 0.5, **kwargs)


def test_second_derivative_uses_the_same_mask():
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: F.dropout(t, 0.4, seed=9) ** 2, (x,))


def _top_level_imports() -> dict[str, set[str]]:
    """Module -> dropkit modules it imports at top level (imports inside functions are lazy)."""
    import ast
    from pathlib import Path

    root = Path(F.__file__).resolve().parents[2]
    modules = {}
    for path in (root / "dropkit").rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dropkit"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("dropkit")}
        # The root package re-exports everything; importing it is not a dependency.
        graph[name] = {d for d in deps if d in modules and d != "dropkit"}
    return graph


def test_ops_sit_below_modules_and_nothing_imports_itself_back():
    graph = _top_level_imports()
    for name, deps in graph.items():
        if name.startswith("dropkit.functional"):
            assert not any(d.startswith("dropkit.nn") for d in deps), (name, deps)

    def reaches(start: str, target: str, seen: set) -> bool:
        for dep in graph.get(start, ()):
            if dep == target or (dep not in seen and not seen.add(dep)
                                 and reaches(dep, target, seen)):
                return True
        return False

    cycles = [name for name in graph if reaches(name, name, set())]
    assert cycles == []


def test_every_name_of_the_functional_api_is_importable():
    for name in F.__all__:
        assert getattr(F, name) is not None
