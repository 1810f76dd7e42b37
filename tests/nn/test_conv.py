"""DropBlock and DropPath: statistics, structure, peers, training smoke test, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as torch_F

import dropkit
from dropkit.functional import drop_block2d, drop_block3d, drop_block_gamma, drop_path
from dropkit.random import keep_threshold
from tests.nn._peers import timm_drop, torchvision_ops


def _quantised(gamma: float) -> float:
    """The seed rate the Philox mask really uses (keep probability on a 2**-16 grid)."""
    return 1.0 - keep_threshold(1.0 - gamma) / 2**16


def _coverage(size: int, block: int) -> torch.Tensor:
    """How many valid block corners cover each position of one axis."""
    valid = size - block + 1
    i = torch.arange(size)
    return (torch.clamp(i, max=valid - 1) - torch.clamp(i - block + 1, min=0) + 1).double()


def _expected_drop_fraction(feature: tuple[int, ...], block: tuple[int, ...], p: float) -> float:
    # A position is dropped unless none of the c seeds covering it fires: 1 - (1 - g)^c.
    gamma = _quantised(drop_block_gamma(p, feature, block))
    counts = _coverage(feature[0], block[0])
    for size, b in zip(feature[1:], block[1:], strict=True):
        counts = counts[..., None] * _coverage(size, b)
    return float((1.0 - (1.0 - gamma) ** counts).mean())


def _drop_fraction_sigma(feature, block, p, masks: int) -> float:
    # Efron-Stein: flipping one of the n seed bits changes a mask's drop fraction
    # by at most prod(block)/prod(feature), so Var <= n g (1 - g) (prod(block)/prod(feature))^2.
    gamma = _quantised(drop_block_gamma(p, feature, block))
    n = math.prod(f - b + 1 for f, b in zip(feature, block, strict=True))
    per_mask = math.sqrt(n * gamma * (1 - gamma)) * math.prod(block) / math.prod(feature)
    return per_mask / math.sqrt(masks)


def _is_union_of_blocks(dropped: torch.Tensor, block: tuple[int, int]) -> bool:
    """Morphological opening: every dropped unit lies in a fully dropped in-map block."""
    d = dropped.double()
    fits = -torch_F.max_pool2d(-d, kernel_size=block, stride=1)  # whole block dropped here
    pad = (block[1] - 1, block[1] - 1, block[0] - 1, block[0] - 1)
    covered = torch_F.max_pool2d(torch_F.pad(fits, pad), kernel_size=block, stride=1)
    return torch.equal(covered, d)


@pytest.mark.parametrize(
    "feature, block, p",
    [
        ((16, 16), (5, 5), 0.2),
        ((14, 14), (7, 7), 0.1),
        ((9, 12), (2, 3), 0.3),
        ((8, 8), (8, 8), 0.5),
    ],
)
def test_drop_block_fraction_matches_exact_expectation(feature, block, p):
    masks = 64 * 32
    x = torch.ones(64, 32, *feature)
    y = drop_block2d(x, p, block, scale_by_keep=False, seed=11)
    measured = float((y == 0).double().mean())
    expected = _expected_drop_fraction(feature, block, p)
    sigma = _drop_fraction_sigma(feature, block, p, masks)
    assert abs(measured - expected) < 6 * sigma, (measured, expected, sigma)
    # First-order in gamma the expectation is p; overlaps only lower it.
    assert expected <= p + 1e-12


def test_drop_block3d_fraction_matches_exact_expectation():
    feature, block, p = (6, 10, 10), (2, 3, 3), 0.2
    y = drop_block3d(torch.ones(32, 16, *feature), p, block, scale_by_keep=False, seed=3)
    measured = float((y == 0).double().mean())
    expected = _expected_drop_fraction(feature, block, p)
    assert abs(measured - expected) < 6 * _drop_fraction_sigma(feature, block, p, 32 * 16)


@pytest.mark.parametrize("shape, block", [((4, 3, 11, 11), (3, 3)), ((4, 3, 9, 10), (4, 2))])
def test_drop_block_drops_whole_blocks_inside_the_map(shape, block):
    y = drop_block2d(torch.ones(shape), 0.4, block, scale_by_keep=False, seed=5)
    dropped = (y == 0).reshape(-1, 1, *shape[-2:])
    assert dropped.any() and not dropped.all()
    assert _is_union_of_blocks(dropped, block)


def test_drop_block_single_block_is_exactly_one_square():
    # Rate so low that a few masks hold exactly one seed: that one must be a full 3x3 square.
    y = drop_block2d(torch.ones(400, 1, 9, 9), 0.05, 3, scale_by_keep=False, seed=2)
    counts = (y == 0).flatten(1).sum(1)
    singles = (counts == 9).nonzero().flatten()
    assert len(singles) > 0
    for index in singles.tolist():
        rows, cols = (y[index, 0] == 0).nonzero(as_tuple=True)
        assert rows.max() - rows.min() == 2 and cols.max() - cols.min() == 2


def test_drop_block_normalises_by_kept_fraction():
    x = torch.ones(8, 4, 12, 12, dtype=torch.float64)
    y = drop_block2d(x, 0.3, 3, seed=7)
    kept = (y != 0).sum()
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], x.numel() / kept))
    assert torch.isclose(y.sum(), torch.tensor(float(x.numel()), dtype=torch.float64))


def test_drop_block_mask_sharing_options():
    x = torch.ones(6, 5, 10, 10)
    shared = drop_block2d(x, 0.3, 3, share_channels=True, seed=1)
    assert all(torch.equal(shared[:, 0], shared[:, c]) for c in range(5))
    assert not torch.equal(shared[0], shared[1])
    batchwise = drop_block2d(x, 0.3, 3, batchwise=True, seed=1)
    assert all(torch.equal(batchwise[0], batchwise[n]) for n in range(6))
    assert not torch.equal(batchwise[0, 0], batchwise[0, 1])
    per_unit = drop_block2d(x, 0.3, 3, seed=1)
    assert not torch.equal(per_unit[0, 0], per_unit[0, 1])


def test_drop_block_eval_identity_reproducibility_and_unbatched():
    x = torch.randn(2, 3, 8, 8)
    module = dropkit.DropBlock2d(0.2, 3).eval()
    assert module(x) is x
    assert drop_block2d(x, 0.0, 3) is x
    assert torch.equal(drop_block2d(x, 0.2, 3, seed=4), drop_block2d(x, 0.2, 3, seed=4))
    other_stream = drop_block2d(x, 0.2, 3, seed=4, offset=1)
    assert not torch.equal(drop_block2d(x, 0.2, 3, seed=4), other_stream)
    torch.manual_seed(0)
    first = dropkit.DropBlock2d(0.2, 3)(x)
    torch.manual_seed(0)
    assert torch.equal(first, dropkit.DropBlock2d(0.2, 3)(x))
    single = drop_block2d(x[0], 0.2, 3, seed=4)
    assert single.shape == x[0].shape
    assert torch.equal(single, drop_block2d(x[:1], 0.2, 3, seed=4)[0])


def test_drop_block_dtypes_keep_dtype():
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        y = drop_block2d(torch.ones(2, 2, 8, 8, dtype=dtype), 0.3, 3, seed=0)
        assert y.dtype == dtype


def test_drop_block_gradcheck():
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: drop_block2d(t, 0.3, (2, 3), seed=9), (x,))
    v = torch.randn(1, 1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: drop_block3d(t, 0.3, 2, seed=9), (v,))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: drop_block2d(torch.ones(1, 1, 5, 5), 0.1, 7), "block_size 7 is larger"),
        (lambda: drop_block2d(torch.ones(1, 1, 5, 9), 0.1, (6, 3)), r"\(6, 3\) is larger"),
        (lambda: drop_block2d(torch.ones(5, 5), 0.1, 3), "got a 2-D input"),
        (lambda: drop_block3d(torch.ones(5, 5, 5), 0.1, 3), r"5-D \(N, C, D, H, W\)"),
        (lambda: drop_block2d(torch.ones(1, 1, 5, 5), 1.5, 3), "between 0 and 1, but got 1.5"),
        (lambda: drop_block2d(torch.ones(1, 1, 5, 5), 0.1, 0), "block_size has to be a positive"),
        (lambda: drop_block2d(torch.ones(1, 1, 5, 5), 0.1, (3, 3, 3)), "sequence of 2"),
        (lambda: dropkit.DropBlock2d(0.1, block_size=-1), "got -1"),
        (lambda: drop_path(torch.ones(4), -0.1), "got -0.1"),
        (lambda: dropkit.DropPath(2.0), "got 2.0"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_drop_block_rejects_integer_input():
    with pytest.raises(TypeError, match="floating-point"):
        drop_block2d(torch.ones(1, 1, 5, 5, dtype=torch.int64), 0.1, 3)


def test_drop_path_drops_whole_samples_at_rate_p():
    n, p = 40_000, 0.25
    y = drop_path(torch.ones(n, 3, 4), p, seed=1)
    per_sample = y.flatten(1)
    assert torch.all(per_sample == per_sample[:, :1])  # one decision per sample
    dropped = float((per_sample[:, 0] == 0).double().mean())
    # 6 binomial standard deviations of the per-sample drop indicator.
    assert abs(dropped - p) < 6 * math.sqrt(p * (1 - p) / n)
    kept_value = per_sample[per_sample != 0][0].item()
    # Survivors are scaled by 2**16 / threshold, within 2**-16 relative of 1 / (1 - p).
    assert kept_value == pytest.approx(1 / (1 - p), rel=2**-15)


def test_drop_path_unbiased_and_options():
    n, p = 40_000, 0.3
    x = torch.full((n, 2), 3.0, dtype=torch.float64)
    y = drop_path(x, p, seed=2)
    # E[y] = 3 exactly (quantised rate); per-sample variance 9 p/(1-p), 6 sigma.
    assert abs(float(y[:, 0].mean()) - 3.0) < 6 * math.sqrt(9 * p / (1 - p) / n)
    unscaled = drop_path(x, p, scale_by_keep=False, seed=2)
    assert set(unscaled.unique().tolist()) == {0.0, 3.0}
    whole = drop_path(torch.ones(16, 4), 0.5, batchwise=True, seed=3)
    assert len(whole.unique()) == 1
    assert drop_path(x, p, training=False) is x
    assert dropkit.DropPath(p, scale_by_keep=False).eval()(x) is x
    assert torch.equal(drop_path(x, p, seed=5), dropkit.DropPath(p, seed=5)(x))


def test_drop_path_gradcheck():
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: drop_path(t, 0.5, seed=1), (x,))


def test_timm_peer_drop_path_same_rate_and_scale():
    timm = timm_drop()
    torch.manual_seed(0)
    n, p = 40_000, 0.2
    theirs = timm.drop_path(torch.ones(n, 2), p, True)
    ours = drop_path(torch.ones(n, 2), p, seed=0)
    bound = 6 * math.sqrt(p * (1 - p) / n)  # 6 binomial sigma each
    for y in (theirs, ours):
        assert abs(float((y[:, 0] == 0).double().mean()) - p) < bound
    assert float(ours.max()) == pytest.approx(float(theirs.max()), rel=2**-15)


def test_timm_peer_drop_block_scaling_and_drop_fraction():
    timm = timm_drop()
    torch.manual_seed(0)
    feature, p = (14, 14), 0.1
    x = torch.ones(256, 16, *feature)
    theirs = timm.drop_block_2d(x, p, 7, couple_channels=False)
    ours = drop_block2d(x, p, 7, seed=0)
    # Same normalisation: survivors scaled by numel / kept, so the sum is preserved.
    for y in (theirs, ours):
        assert float(y.sum()) == pytest.approx(x.numel(), rel=1e-4)
    # Deliberate difference: timm draws block centres over the whole map (blocks
    # clipped at the border) with the paper's gamma, which assumes seeds only where
    # a block fits, so it drops about twice p here; dropkit follows Algorithm 1.
    ours_fraction = float((ours == 0).double().mean())
    theirs_fraction = float((theirs == 0).double().mean())
    assert abs(ours_fraction - p) < 0.01
    assert theirs_fraction > 1.5 * p


def test_torchvision_peer_drop_block_and_stochastic_depth():
    ops = torchvision_ops()
    torch.manual_seed(0)
    x = torch.ones(256, 16, 14, 14)
    theirs = ops.drop_block2d(x, 0.1, 7)
    ours = drop_block2d(x, 0.1, 7, seed=0)
    expected = _expected_drop_fraction((14, 14), (7, 7), 0.1)
    sigma = _drop_fraction_sigma((14, 14), (7, 7), 0.1, 256 * 16)
    for y in (theirs, ours):
        assert abs(float((y == 0).double().mean()) - expected) < 6 * sigma
        assert float(y.sum()) == pytest.approx(x.numel(), rel=1e-4)
    depth = ops.stochastic_depth(torch.ones(40_000, 2), 0.2, "row", True)
    assert abs(float((depth[:, 0] == 0).double().mean()) - 0.2) < 6 * math.sqrt(0.16 / 40_000)


def _digits():
    datasets = pytest.importorskip("sklearn.datasets")
    images, labels = datasets.load_digits(return_X_y=True)
    x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    return x, torch.tensor(labels)


def test_cnn_with_dropblock_and_droppath_trains_on_digits():
    x, y = _digits()
    torch.manual_seed(0)
    perm = torch.randperm(len(x))
    train, test = perm[:1400], perm[1400:]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(1, 16, 3, padding=1)
            self.block = torch.nn.Conv2d(16, 16, 3, padding=1)
            self.drop_block = dropkit.DropBlock2d(0.1, 3)
            self.drop_path = dropkit.DropPath(0.1)
            self.head = torch.nn.Linear(16 * 4 * 4, 10)

        def forward(self, t):
            h = torch.relu(self.stem(t))
            h = h + self.drop_path(torch.relu(self.block(self.drop_block(h))))
            return self.head(torch_F.max_pool2d(h, 2).flatten(1))

    model = Net()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(6):
        for batch in train.split(64):
            loss = torch_F.cross_entropy(model(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    # A linear model gets ~0.95 on digits; chance is 0.1.
    assert accuracy > 0.9, accuracy


def test_module_repr_and_p_is_assignable_for_schedules():
    module = dropkit.DropBlock2d(0.1, 5, batchwise=True)
    assert "p=0.1, block_size=5, batchwise=True" in repr(module)
    module.p = 0.0
    x = torch.randn(1, 1, 6, 6)
    assert module(x) is x
    assert "p=0.2" in repr(dropkit.DropPath(0.2))


@pytest.mark.parametrize(
    "shape, block", [((2, 3, 5, 6), (3, 2)), ((1, 2, 8, 8), (7, 7)), ((2, 2, 4, 5, 6), (2, 3, 4))]
)
def test_seed_expansion_equals_block_wide_max_pooling(shape, block):
    from dropkit.functional.conv import expand_seeds as _expand_seeds

    seeds = (torch.rand(shape, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    # Brute force: a seed at i covers [i, i + block) along every axis.
    expected = torch.zeros(
        *shape[:2], *(n + b - 1 for n, b in zip(shape[2:], block, strict=True))
    )
    for index in seeds.nonzero().tolist():
        window = [slice(i, i + b) for i, b in zip(index[2:], block, strict=True)]
        expected[(index[0], index[1], *window)] = 1.0
    assert torch.equal(_expand_seeds(seeds, block), expected)
