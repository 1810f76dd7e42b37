"""Drop-in parity with torch.nn (issue 15): each test is one defect's reproduction.

The module table below is every dropkit module class; the stream, seed and
compile tests run over all of it, so a new module joins them by one line here.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import grad, jvp, vmap

import dropkit
import dropkit.functional as DF
from dropkit import mc

# name -> (factory(**seed_kwargs), input factory). Inputs are float unless the
# module takes token ids.
MODULES = {
    "Dropout": (lambda **k: dropkit.Dropout(0.3, **k), lambda: torch.randn(2, 3, 6, 6)),
    "Dropout1d": (lambda **k: dropkit.Dropout1d(0.3, **k), lambda: torch.randn(2, 8, 5)),
    "Dropout2d": (lambda **k: dropkit.Dropout2d(0.3, **k), lambda: torch.randn(2, 8, 6, 6)),
    "Dropout3d": (lambda **k: dropkit.Dropout3d(0.3, **k), lambda: torch.randn(2, 8, 2, 3, 3)),
    "SpatialDropout": (
        lambda **k: dropkit.SpatialDropout(0.3, **k), lambda: torch.randn(2, 8, 6, 6)
    ),
    "AlphaDropout": (lambda **k: dropkit.AlphaDropout(0.3, **k), lambda: torch.randn(2, 3, 6, 6)),
    "FeatureAlphaDropout": (
        lambda **k: dropkit.FeatureAlphaDropout(0.3, **k), lambda: torch.randn(2, 8, 6, 6)
    ),
    "DropBlock2d": (
        lambda **k: dropkit.DropBlock2d(0.3, 3, **k), lambda: torch.randn(2, 3, 8, 8)
    ),
    "DropBlock3d": (
        lambda **k: dropkit.DropBlock3d(0.3, 2, **k), lambda: torch.randn(2, 3, 4, 4, 4)
    ),
    "DropPath": (lambda **k: dropkit.DropPath(0.3, **k), lambda: torch.randn(16, 3, 4)),
    "LockedDropout": (lambda **k: dropkit.LockedDropout(0.3, **k), lambda: torch.randn(5, 4, 8)),
    "EmbeddingDropout": (
        lambda **k: dropkit.EmbeddingDropout(nn.Embedding(40, 4), 0.3, **k),
        lambda: torch.arange(40).view(4, 10),
    ),
    "WordDropout": (
        lambda **k: dropkit.WordDropout(0.3, 1, **k), lambda: torch.randint(2, 50, (4, 10))
    ),
    "Zoneout": (
        lambda **k: dropkit.Zoneout(nn.LSTMCell(4, 16), 0.3, 0.3, **k), lambda: torch.randn(3, 4)
    ),
    "WeightDrop": (
        lambda **k: dropkit.WeightDrop(nn.Linear(8, 6), ["weight"], 0.3, **k),
        lambda: torch.randn(3, 8),
    ),
    "DropConnect": (
        lambda **k: dropkit.DropConnect(nn.Linear(8, 6), 0.3, **k), lambda: torch.randn(3, 8)
    ),
    "GaussianDropout": (
        lambda **k: dropkit.GaussianDropout(0.3, **k), lambda: torch.randn(2, 3, 6, 6)
    ),
    "GaussianNoise": (lambda **k: dropkit.GaussianNoise(0.3, **k), lambda: torch.randn(2, 3, 6, 6)),
    "ConcreteDropout": (
        lambda **k: dropkit.ConcreteDropout(0.3, **k), lambda: torch.randn(2, 3, 6, 6)
    ),
}


def test_the_table_covers_every_module_class():
    classes = {
        name for name in dropkit.nn.__all__
        if isinstance(getattr(dropkit.nn, name), type)
        # The fused bias-dropout-add ops have their own tests (tests/kernels).
        and not getattr(dropkit.nn, name).__module__.endswith(".fused")
    }
    assert set(MODULES) == classes


def _first(output):
    return output[0] if isinstance(output, tuple) else output


# --- 1. memory layout ------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
        lambda: torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last).mul(1)[:, :2],
        lambda: torch.randn(3, 4, 5).permute(2, 0, 1),
        lambda: torch.randn(4, 6).t(),
    ],
)
def test_element_wise_dropout_keeps_the_layout_and_not_depends_on_it(make):
    x = make()
    y = dropkit.Dropout(0.2, seed=3)(x)
    if x.is_contiguous(memory_format=torch.channels_last) and x.dim() == 4:
        assert y.is_contiguous(memory_format=torch.channels_last)
    # torch's rule for element-wise ops: the strides empty_like picks (x's own when dense).
    assert y.stride() == torch.empty_like(x).stride() == torch.nn.Dropout(0.2)(x).stride()
    # The mask is a function of the logical index: same values as the row-major input.
    assert torch.equal(y, DF.dropout(x.contiguous(), 0.2, seed=3))
    x_grad = x.detach().clone().requires_grad_()
    DF.dropout(x_grad, 0.2, seed=3).sum().backward()
    assert torch.equal(x_grad.grad, DF.dropout(torch.ones(x.shape), 0.2, seed=3))


def test_inplace_on_a_channels_last_input_writes_the_same_values():
    x = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    expected = DF.dropout(x.contiguous(), 0.4, seed=1)
    out = DF.dropout(x, 0.4, True, True, seed=1)
    assert out is x and torch.equal(x, expected)


# --- 2. inplace on a leaf only raises when something is written -----------------------


def test_inplace_leaf_passes_in_eval_and_at_p0_like_torch():
    leaf = torch.ones(4, 6, requires_grad=True)
    assert dropkit.Dropout(0.5, True).eval()(leaf) is leaf
    assert dropkit.Dropout(0.0, True)(leaf) is leaf
    assert torch.nn.Dropout(0.5, True).eval()(leaf) is leaf
    assert DF.alpha_dropout(leaf, 0.5, False, True) is leaf
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        dropkit.Dropout(0.5, True)(leaf)
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        DF.dropout(leaf, 0.5, False, True, mode="classic")  # classic eval writes (1 - p) x


# --- 3. torch.func and forward-mode AD -----------------------------------------------


def test_torch_func_grad_gives_the_mask():
    x = torch.randn(4, 6)
    g = grad(lambda v: DF.dropout(v, 0.4, seed=2).sum())(x)
    assert torch.equal(g, DF.dropout(torch.ones_like(x), 0.4, seed=2))


@pytest.mark.parametrize("seed", [None, 3])
@pytest.mark.parametrize(
    "op", [lambda v, s: DF.dropout(v, 0.5, seed=s), lambda v, s: DF.dropout2d(v, 0.5, seed=s)]
)
def test_vmap_honours_randomness(op, seed):
    batch = torch.ones(6, 8, 4, 4)
    different = vmap(lambda v: op(v, seed), randomness="different")(batch)
    same = vmap(lambda v: op(v, seed), randomness="same")(batch)
    # 6 entries of 128 units at p = 0.5 sharing one mask by chance: probability 2**-640.
    assert not all(torch.equal(different[0], entry) for entry in different[1:])
    assert all(torch.equal(same[0], entry) for entry in same[1:])
    if seed is not None:
        # "same" gives the mask of the unbatched call.
        assert torch.equal(same[0], op(batch[0], seed))
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(lambda v: op(v, seed))(batch)


def test_grad_of_vmap_and_inplace_under_vmap():
    ones = torch.ones(3, 8)
    out = vmap(lambda w: DF.dropout(w, 0.5, seed=1), randomness="different")(ones)
    g = grad(lambda v: vmap(lambda w: DF.dropout(w, 0.5, seed=1), randomness="different")(v)
             .sum())(ones)
    assert torch.equal(g, out)
    shared = vmap(lambda v: DF.dropout(v * 1, 0.5, True, True, seed=3), randomness="same")(ones)
    assert torch.equal(shared, DF.dropout(torch.ones(8), 0.5, seed=3).expand(3, 8))


def test_forward_ad_and_jvp_give_the_tangent_the_same_mask():
    x, tangent = torch.randn(4, 6), torch.randn(4, 6)
    expected = DF.dropout(tangent, 0.4, seed=2)
    _, out_tangent = jvp(lambda v: DF.dropout(v, 0.4, seed=2), (x,), (tangent,))
    assert torch.equal(out_tangent, expected)
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, tangent)
        assert torch.equal(fwAD.unpack_dual(DF.dropout(dual, 0.4, seed=2)).tangent, expected)
        dual = fwAD.make_dual(x.clone(), tangent.clone()) * 1
        out = DF.dropout(dual, 0.4, True, True, seed=2)
        assert torch.equal(fwAD.unpack_dual(out).tangent, expected)


# --- 4/5. torch.compile(fullgraph=True) -------------------------------------------------

# Every module class, seeded and unseeded, on the "eager" backend (Dynamo's full
# trace, the part that broke); "inductor" for three representatives only, since
# inductor compiles C++ on CPU for each case (tens of seconds): Dropout (the kernel
# op), DropBlock2d (the op on a seed grid plus cumsum) and GaussianNoise (the
# pure-tensor Philox stream).


@pytest.mark.parametrize("seed", [None, 7])
@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_compiles_with_fullgraph(name, seed):
    torch._dynamo.reset()
    make, make_input = MODULES[name]
    module = make(seed=seed).train()
    reference = copy.deepcopy(module)
    compiled = torch.compile(module, fullgraph=True, backend="eager")
    x = make_input()
    first, second = _first(compiled(x)), _first(compiled(x))
    expected = [_first(reference(x)), _first(reference(x))]
    assert first.shape == expected[0].shape
    if seed is not None:
        # The compiled graph walks the same stream as eager: calls 0 and 1, not one mask.
        assert torch.equal(first, expected[0]) and torch.equal(second, expected[1])
        assert not torch.equal(first, second)


@pytest.mark.parametrize(
    "name, seed", [("Dropout", None), ("DropBlock2d", None), ("GaussianNoise", 7)]
)
def test_representative_modules_compile_with_inductor(name, seed):
    torch._dynamo.reset()
    make, make_input = MODULES[name]
    module = make(seed=seed).train()
    eager = copy.deepcopy(module)
    x = make_input()
    out = torch.compile(module, fullgraph=True, backend="inductor")(x)
    assert out.shape == x.shape
    if seed is not None:
        # Inductor may fuse Box-Muller differently: equal up to float rounding.
        torch.testing.assert_close(out, eager(x))


# torch.jit.trace: the traced graph must draw a fresh mask per call (torch's dropout
# traces as aten::dropout), not replay the one it saw, and never record an empty
# buffer for a kernel that writes through a raw pointer. WeightDrop and DropConnect
# call torch.func.functional_call, which torch refuses to trace.
_UNTRACEABLE = {"WeightDrop", "DropConnect"}


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("seed", [None, 7])
@pytest.mark.parametrize("name", sorted(set(MODULES) - _UNTRACEABLE))
def test_every_module_traces_to_a_graph_that_draws_new_masks(name, seed):
    make, make_input = MODULES[name]
    module = make(seed=seed).train()
    eager = copy.deepcopy(module)
    x = make_input()
    traced = torch.jit.trace(module, (x,), check_trace=False)
    torch.manual_seed(0)
    first, second = _first(traced(x)), _first(traced(x))
    assert not torch.equal(first, second)
    if seed is None:
        torch.manual_seed(0)
        assert torch.equal(_first(traced(x)), first)  # torch.manual_seed reproduces it
    else:
        # Tracing ran call 0; the graph reads the stream counter as data: calls 1 and 2.
        expected = [_first(eager(x)) for _ in range(3)]
        assert torch.equal(first, expected[1]) and torch.equal(second, expected[2])


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_traced_dropout_backpropagates_its_mask():
    traced = torch.jit.trace(dropkit.Dropout(0.5).train(), (torch.randn(4, 9),))
    x = torch.randn(64, 9, requires_grad=True)
    out = traced(x)
    out.backward(torch.ones_like(out))
    assert torch.equal(x.grad, (out != 0).float() * 2.0)


# --- 6. empty batch ----------------------------------------------------------------------


def test_concrete_dropout_passes_an_empty_batch():
    empty = torch.ones(0, 3)
    layer = dropkit.ConcreteDropout(0.3)
    assert layer(empty).shape == (0, 3)
    assert layer.input_features == 3


# --- 7. p = 1 gives zeros, never NaN, for every mask-based variant ---------------------


@pytest.mark.parametrize(
    "op",
    [
        lambda x: dropkit.Dropout2d(1.0)(x),
        lambda x: DF.dropout2d(x, 1.0),
        lambda x: DF.spatial_dropout(x, 1.0),
        lambda x: DF.drop_path(x, 1.0),
        lambda x: DF.locked_dropout(x, 1.0),
        lambda x: DF.dropout(x, 1.0, broadcast_dims=(2, 3)),
        lambda x: DF.dropout(x, 1.0),
        lambda x: DF.drop_block2d(x, 1.0, 4),  # a block the map's size: all covered
        lambda x: DF.dropout(x.clone(), 1.0, True, True, broadcast_dims=1),
    ],
)
def test_p_one_gives_zeros_even_for_inf_and_nan(op):
    x = torch.full((2, 3, 4, 4), math.inf)
    x[0, 0, 0, 0] = math.nan
    assert torch.equal(op(x), torch.zeros_like(x))


def test_dropped_units_are_exact_for_inf_inputs_at_partial_rates():
    x = torch.full((64, 8), math.inf)
    assert not DF.locked_dropout(x.view(8, 8, 8), 0.5, seed=0).isnan().any()
    h = torch.full((4, 8), math.inf)
    assert not DF.zoneout(h, torch.zeros(4, 8), 0.5, seed=0).isnan().any()
    alpha = DF.alpha_dropout(x, 0.5, True, seed=0)
    assert not alpha.isnan().any()
    emb = torch.full((10, 3), math.inf)
    assert not DF.embedding_dropout(torch.arange(10), emb, 0.5, seed=0).isnan().any()


@pytest.mark.parametrize(
    "op",
    [
        lambda x: DF.drop_path(x, 0.4, seed=3),
        lambda x: DF.dropout2d(x, 0.4, seed=3),
        lambda x: DF.drop_block2d(x, 0.4, 2, seed=3),
        lambda x: DF.dropout(x, 0.4, broadcast_dims=(1, 3), seed=3),
    ],
)
def test_finite_inputs_take_the_plain_product_with_the_same_bits(op, monkeypatch):
    # On CPU a finite input is multiplied directly (a broadcast where costs 4-7x);
    # a sum that overflows from finite values, or an inf, must still give exact zeros.
    from dropkit.functional import standard

    finite = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    overflowing = torch.full((4, 3, 6, 6), 1e308, dtype=torch.float64)
    with_inf = finite.clone()
    with_inf[0, 0] = math.inf
    for x in (finite, overflowing, with_inf):
        leaf = x.clone().requires_grad_()
        fast = op(leaf)
        fast.sum().backward()
        with monkeypatch.context() as patch:
            patch.setattr(standard, "_plain_product_is_exact", lambda input: False)
            exact_leaf = x.clone().requires_grad_()
            exact = op(exact_leaf)
            exact.sum().backward()
        assert torch.equal(fast, exact) and torch.equal(leaf.grad, exact_leaf.grad)
        assert not fast.isnan().any()
    assert standard._plain_product_is_exact(finite)
    assert not standard._plain_product_is_exact(overflowing)
    assert not standard._plain_product_is_exact(with_inf)


# --- 8. seeds are checked where they enter ------------------------------------------------

BAD_SEEDS = [(-1, ValueError), (2**64, ValueError), (1.5, TypeError), ("7", TypeError),
             (True, TypeError)]


@pytest.mark.parametrize("seed, error", BAD_SEEDS)
@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_constructor_checks_its_seed(name, seed, error):
    make, _ = MODULES[name]
    with pytest.raises(error, match=r"seed must be .*\[0, 2\*\*64\), got"):
        make(seed=seed)


def test_numpy_integer_seeds_are_accepted():
    assert dropkit.Dropout(0.5, seed=np.int64(3)).seed == 3


@pytest.mark.parametrize("seed, error", BAD_SEEDS)
def test_mc_predict_checks_its_seed(seed, error):
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))
    with pytest.raises(error, match=r"seed must be .*\[0, 2\*\*64\), got"):
        mc.predict(model, torch.randn(2, 3), 2, seed=seed)


# --- 9. messages that name the bad value; inputs that are refused -----------------------


def test_bad_arguments_are_named():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="block_size has to be .* but got 2.5"):
        DF.drop_block2d(x, 0.3, 2.5)
    with pytest.raises(TypeError, match="word_dropout expects an integer tensor .*torch.bool"):
        DF.word_dropout(torch.ones(3, dtype=torch.bool), 0.5, 1)
    with pytest.raises(TypeError, match="p_logit as a one-element .* but got float -2.0"):
        DF.concrete_dropout(x, -2.0)
    with pytest.raises(TypeError, match="broadcast_dims has to be an int, a sequence"):
        DF.dropout(x, 0.5, broadcast_dims="01")


def test_broadcast_dims_accepts_an_int_and_none():
    x = torch.randn(4, 6)
    as_int = DF.dropout(x, 0.5, broadcast_dims=1, seed=0)
    assert torch.equal(as_int, DF.dropout(x, 0.5, broadcast_dims=(1,), seed=0))
    assert torch.equal(DF.dropout(x, 0.5, broadcast_dims=None, seed=0), DF.dropout(x, 0.5, seed=0))


# --- 10. small differences from torch --------------------------------------------------


def test_rate_is_kept_as_given_and_any_real_type_is_accepted():
    assert repr(dropkit.Dropout(0)) == repr(nn.Dropout(0)) == "Dropout(p=0, inplace=False)"
    assert type(dropkit.Dropout(0).p) is int
    assert dropkit.Dropout(np.float32(0.25)).p == 0.25
    assert DF.dropout(torch.ones(3), np.float64(0.0)).sum() == 3
    with pytest.raises(TypeError, match="got True"):
        dropkit.Dropout(True)
    with pytest.raises(ValueError, match="got nan"):
        dropkit.Dropout(float("nan"))
    # set_p and schedules still see an int rate as a dropout rate.
    model = nn.Sequential(dropkit.Dropout(0))
    assert dropkit.set_p(model, 0.2) == ["0"]


# --- 11. torch's positional signatures --------------------------------------------------


@pytest.mark.parametrize(
    "name, shape",
    [("dropout", (4, 6)), ("alpha_dropout", (4, 6)), ("feature_alpha_dropout", (4, 3, 5)),
     ("dropout1d", (4, 3, 5)), ("dropout2d", (4, 3, 5, 5)), ("dropout3d", (4, 3, 2, 5, 5))],
)
def test_functional_ops_take_torch_positional_signature(name, shape):
    ours = getattr(DF, name)
    x = torch.randn(shape)
    y = x.clone()
    torch.manual_seed(0)
    expected = ours(x, 0.5, True, False, seed=4)
    assert ours(y, 0.5, True, True, seed=4) is y and torch.equal(y, expected)
    assert ours(x, 0.5, False, False) is x


# --- 12. a seeded module is a reproducible stream ----------------------------------------


@pytest.mark.parametrize("name", sorted(MODULES))
def test_seeded_module_draws_a_new_mask_per_call_and_resumes(name):
    make, make_input = MODULES[name]
    module = make(seed=11).train()
    torch_keys = make().state_dict().keys()
    assert module.state_dict().keys() == torch_keys  # no new key by default
    x = make_input()
    first, second = _first(module(x)), _first(module(x))
    assert not torch.equal(first, second)
    # Resume: a fresh module told the position continues the stream.
    saved = dropkit.nn.stream_state(nn.Sequential(module))
    resumed = copy.deepcopy(module)
    third = _first(module(x))
    fresh = make(seed=11).train()
    fresh.load_state_dict(resumed.state_dict())
    dropkit.nn.load_stream_state(nn.Sequential(fresh), saved)
    assert torch.equal(_first(fresh(x)), third)
    # fixed_mask=True is the explicit request for one mask.
    fixed = make(seed=11, fixed_mask=True).train()
    fixed.load_state_dict(module.state_dict())
    assert torch.equal(_first(fixed(x)), _first(fixed(x)))


def test_call_k_draws_the_mask_of_seed_and_offset_k():
    x = torch.randn(8, 16)
    module = dropkit.Dropout(0.3, seed=123)
    for k in range(3):
        assert torch.equal(module(x), DF.dropout(x, 0.3, seed=123, offset=k))
    module.eval()
    module(x)
    assert int(module.stream_offset) == 3  # eval calls draw nothing


def test_persist_stream_puts_the_position_in_the_state_dict():
    module = dropkit.Dropout(0.3, seed=5, persist_stream=True)
    module(torch.randn(4))
    state = module.state_dict()
    assert int(state["stream_offset"]) == 1
    restored = dropkit.Dropout(0.3, seed=5, persist_stream=True)
    restored.load_state_dict(state)
    x = torch.randn(4, 8)
    assert torch.equal(restored(x), DF.dropout(x, 0.3, seed=5, offset=1))


def test_fixed_mask_needs_a_seed():
    with pytest.raises(ValueError, match="fixed_mask=True needs a seed"):
        dropkit.Dropout(0.3, fixed_mask=True)


# --- 13. wrong-rank errors are what torch raises -----------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: dropkit.Dropout1d()(torch.rand(1, 2, 2, 2)),
        lambda: dropkit.Dropout2d()(torch.rand(2, 2)),
        lambda: dropkit.Dropout3d()(torch.rand(2, 2)),
        lambda: DF.feature_alpha_dropout(torch.rand(3), 0.5, True),
        lambda: DF.drop_block2d(torch.rand(3, 3), 0.5, 1),
        lambda: DF.spatial_dropout(torch.rand(3, 3), 0.5),
    ],
)
def test_rank_errors_are_runtime_and_value_errors(call):
    with pytest.raises(RuntimeError) as caught:
        call()
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, DF.RankError)
    with pytest.raises(RuntimeError):
        torch.nn.Dropout1d()(torch.rand(1, 2, 2, 2))


# --- 14. DropBlock inplace --------------------------------------------------------------


@pytest.mark.parametrize("spatial", [2, 3])
def test_drop_block_inplace(spatial):
    shape = (2, 3, 6, 6) if spatial == 2 else (2, 3, 4, 4, 4)
    op = DF.drop_block2d if spatial == 2 else DF.drop_block3d
    cls = dropkit.DropBlock2d if spatial == 2 else dropkit.DropBlock3d
    x = torch.randn(shape)
    expected = op(x, 0.3, 3 if spatial == 2 else 2, seed=1)
    y = x.clone()
    assert op(y, 0.3, 3 if spatial == 2 else 2, inplace=True, seed=1) is y
    assert torch.equal(y, expected)
    module = cls(0.3, 3 if spatial == 2 else 2, True, seed=1)
    z = x.clone()
    assert module(z) is z and torch.equal(z, expected)
    assert "inplace=True" in repr(module)
