"""convert() and set_p() on torch.nn, timm-style and torchvision-style models.

timm and torchvision do not import beside torch 2.13.0 here, so the peers'
modules are re-created below with their real module paths and attributes (the
behaviour is copied from timm.layers.drop and torchvision.ops); convert()
recognises peers by class name and package, exactly as it would the originals.
"""

import math

import pytest
import torch
from torch import nn

import dropkit
import dropkit.nn
from tests.nn._peers import timm_drop


class DropPath(nn.Module):
    """timm.layers.drop.DropPath (timm 1.0)."""

    __module__ = "timm.layers.drop"

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * (mask / keep if self.scale_by_keep else mask)


class TimmDropBlock2d(nn.Module):
    """timm.layers.drop.DropBlock2d's constructor and attributes (timm 1.0)."""

    __module__ = "timm.layers.drop"

    def __init__(self, drop_prob=0.1, block_size=7, gamma_scale=1.0, with_noise=False):
        super().__init__()
        self.drop_prob, self.block_size = drop_prob, block_size
        self.gamma_scale, self.with_noise = gamma_scale, with_noise
        self.couple_channels, self.scale_by_keep = True, True

    def forward(self, x):
        return x  # eval behaviour; these tests never train it


TimmDropBlock2d.__name__ = TimmDropBlock2d.__qualname__ = "DropBlock2d"


class StochasticDepth(nn.Module):
    """torchvision.ops.stochastic_depth.StochasticDepth."""

    __module__ = "torchvision.ops.stochastic_depth"

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        shape = [x.shape[0]] + [1] * (x.ndim - 1) if self.mode == "row" else [1] * x.ndim
        noise = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - self.p)
        return x * noise.div_(1 - self.p)


class Block(nn.Module):
    """A torchvision MBConv/timm ViT-like residual block with every kind of dropout."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.drop = nn.Dropout2d(0.1)
        self.stochastic_depth = StochasticDepth(0.2, "row")
        self.drop_path = DropPath(0.1)

    def forward(self, x):
        branch = self.drop(torch.relu(self.bn(self.conv(x))))
        return x + self.drop_path(self.stochastic_depth(branch))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        Block(), Block(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 6 * 6, 8),
        nn.SELU(), nn.AlphaDropout(0.1), nn.Linear(8, 3),
    ).eval()


_HAS_DROP_PATH = getattr(dropkit.nn, "DropPath", None) is not None


def test_converted_model_gives_identical_outputs_in_eval_mode():
    model = _model()
    x = torch.randn(5, 4, 6, 6)
    result = dropkit.convert(model)
    converted = result.model
    assert converted is not model
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))
    changed = {c.name: c.after for c in result.changed}
    assert changed["0.drop"] == "dropkit.nn.standard.Dropout2d"
    assert changed["3"] == "dropkit.nn.standard.Dropout"
    assert changed["6"] == "dropkit.nn.standard.AlphaDropout"
    assert isinstance(converted[3], dropkit.Dropout) and converted[3].p == 0.5
    assert converted[0].drop.p == 0.1 and not converted[0].drop.training


def test_peers_are_converted_or_reported_as_skipped():
    result = dropkit.convert(_model())
    converted = {c.name for c in result.changed}
    skipped = {s.name: s.reason for s in result.skipped}
    for name in ("0.stochastic_depth", "0.drop_path", "1.stochastic_depth", "1.drop_path"):
        if _HAS_DROP_PATH:
            assert name in converted
        else:
            assert "dropkit.nn.DropPath is not available" in skipped[name]
            assert type(result.model.get_submodule(name)).__module__.startswith(
                ("timm.", "torchvision.")
            )
    if not _HAS_DROP_PATH:
        assert "skipped 0.drop_path (timm.layers.drop.DropPath)" in str(result)


def test_peer_mapping_passes_rate_and_options():
    model = nn.Sequential(
        DropPath(0.25, scale_by_keep=False),
        StochasticDepth(0.3, "row"),
        StochasticDepth(0.3, "batch"),
        TimmDropBlock2d(0.15, block_size=5),
        TimmDropBlock2d(0.15, block_size=5, with_noise=True),
    )
    result = dropkit.convert(model, inplace=True)
    assert result.model is model
    assert (model[0].p, model[0].scale_by_keep, model[0].batchwise) == (0.25, False, False)
    assert (model[1].p, model[1].scale_by_keep, model[1].batchwise) == (0.3, True, False)
    # torchvision's mode="batch" is DropPath(batchwise=True), as docs/tools.md says.
    assert (model[2].p, model[2].batchwise) == (0.3, True)
    assert (model[3].p, model[3].block_size) == (0.15, (5, 5))
    # timm's default couple_channels=True is one mask for all channels of a sample.
    assert model[3].share_channels and model[3].clip_blocks
    skipped = {s.name: s.reason for s in result.skipped}
    assert "with_noise=True" in skipped["4"] and isinstance(model[4], TimmDropBlock2d)


# --- converted modules behave like the originals, rule by rule (on outputs) -----------


def _torchvision_drop_block(x, p, block_size, eps=1e-6):
    """torchvision.ops.drop_block2d/3d (0.20), training branch, copied."""
    spatial = x.dim() - 2
    feature = x.shape[2:]
    gamma = p * math.prod(feature) / (
        block_size**spatial * math.prod(f - block_size + 1 for f in feature)
    )
    noise = torch.empty(
        (*x.shape[:2], *(f - block_size + 1 for f in feature)), dtype=x.dtype
    ).bernoulli_(gamma)
    noise = torch.nn.functional.pad(noise, [block_size // 2] * (2 * spatial), value=0)
    pool = torch.nn.functional.max_pool2d if spatial == 2 else torch.nn.functional.max_pool3d
    noise = 1 - pool(noise, stride=1, kernel_size=block_size, padding=block_size // 2)
    return x * noise * (noise.numel() / (eps + noise.sum()))


class TorchvisionDropBlock2d(nn.Module):
    __module__ = "torchvision.ops.drop_block"

    def __init__(self, p, block_size, inplace=False, eps=1e-6):
        super().__init__()
        self.p, self.block_size, self.inplace, self.eps = p, block_size, inplace, eps

    def forward(self, x):
        return _torchvision_drop_block(x, self.p, self.block_size) if self.training else x


TorchvisionDropBlock2d.__name__ = TorchvisionDropBlock2d.__qualname__ = "DropBlock2d"


class TorchvisionDropBlock3d(TorchvisionDropBlock2d):
    __module__ = "torchvision.ops.drop_block"


TorchvisionDropBlock3d.__name__ = TorchvisionDropBlock3d.__qualname__ = "DropBlock3d"


def _dropped_fraction(y: torch.Tensor, maps_dims: tuple[int, ...]) -> tuple[float, float]:
    """Mean fraction of zeros and its standard error over independent maps."""
    per_map = (y == 0).double().mean(dim=maps_dims).flatten()
    return float(per_map.mean()), float(per_map.std() / math.sqrt(per_map.numel()))


def _assert_same_rate(original, converted, x, maps_dims):
    torch.manual_seed(0)
    ours, ours_se = _dropped_fraction(converted(x), maps_dims)
    theirs, theirs_se = _dropped_fraction(original(x), maps_dims)
    # 6 standard errors of the difference of two independent means.
    assert abs(ours - theirs) < 6 * math.hypot(ours_se, theirs_se) + 1e-9, (ours, theirs)


def _convert_one(module: nn.Module) -> nn.Module:
    converted = dropkit.convert(module).model
    assert converted is not module and type(converted).__module__.startswith("dropkit.nn")
    return converted.train()


@pytest.mark.parametrize("couple_channels", [True, False])
@pytest.mark.parametrize("block_size", [3, 4, 40])
def test_timm_drop_block_converts_to_the_same_behaviour(couple_channels, block_size):
    timm = timm_drop()
    original = timm.DropBlock2d(0.3, block_size, couple_channels=couple_channels)
    # convert() matches peers by package, as it would the installed timm.layers.drop.
    type(original).__module__ = "timm.layers.drop"
    converted = _convert_one(original.train())
    x = torch.rand(128, 4, 12, 12) + 0.5
    y = converted(x)
    dropped = y == 0
    if block_size > 12:  # clipped to the map, as timm clips it: everything dropped
        assert bool(dropped.all()) and bool((original(x) == 0).all())
        return
    # One mask per sample shared by its channels exactly when timm couples them.
    shared = bool((dropped == dropped[:, :1]).all())
    assert shared == couple_channels
    _assert_same_rate(original, converted, x, (-2, -1))
    # Survivors are scaled by numel / kept of the mask, as timm does.
    kept = ~dropped
    ratio = y[kept] / x[kept]
    assert torch.allclose(ratio, ratio[0]) and float(ratio[0]) >= 1.0


def test_timm_drop_path_converts_to_the_same_behaviour():
    for scale_by_keep in (True, False):
        original = DropPath(0.3, scale_by_keep=scale_by_keep).train()
        converted = _convert_one(original)
        x = torch.rand(4000, 3) + 0.5
        ratio = converted(x) / x
        scale = 1 / 0.7 if scale_by_keep else 1.0
        # Each sample is dropped whole or kept whole, scaled as timm scales it.
        assert bool((ratio == 0).all(1).logical_or(torch.isclose(ratio, torch.tensor(scale))
                                                   .all(1)).all())
        _assert_same_rate(original, converted, x, (1,))


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_torchvision_stochastic_depth_converts_to_the_same_behaviour(mode):
    original = StochasticDepth(0.3, mode).train()
    converted = _convert_one(original)
    x = torch.rand(64, 3) + 0.5
    decisions = torch.stack([(converted(x) == 0).all(1) for _ in range(400)])
    if mode == "batch":
        # The whole batch shares each decision.
        assert bool((decisions == decisions[:, :1]).all())
    else:
        assert not bool((decisions == decisions[:, :1]).all())
    # 400 * 64 Bernoulli(0.3) decisions (400 for batch): 6 standard deviations.
    n = decisions.numel() if mode == "row" else decisions.shape[0]
    assert abs(float(decisions.double().mean()) - 0.3) < 6 * math.sqrt(0.21 / n)


@pytest.mark.parametrize(
    "original, x",
    [
        (TorchvisionDropBlock2d(0.3, 3), torch.rand(256, 4, 10, 10) + 0.5),
        (TorchvisionDropBlock3d(0.3, 3), torch.rand(64, 4, 6, 6, 6) + 0.5),
    ],
)
def test_torchvision_drop_block_converts_to_the_same_behaviour(original, x):
    converted = _convert_one(original.train())
    assert not converted.share_channels and not converted.clip_blocks
    spatial = tuple(range(2, x.dim()))
    _assert_same_rate(original, converted, x, spatial)


@pytest.mark.parametrize(
    "source, target, shape",
    [
        (nn.Dropout(0.3), dropkit.Dropout, (4, 6)),
        (nn.Dropout1d(0.3), dropkit.Dropout1d, (4, 3, 5)),
        (nn.Dropout2d(0.3), dropkit.Dropout2d, (4, 3, 5, 5)),
        (nn.Dropout3d(0.3), dropkit.Dropout3d, (4, 3, 2, 5, 5)),
        (nn.AlphaDropout(0.3), dropkit.AlphaDropout, (4, 6)),
        (nn.FeatureAlphaDropout(0.3), dropkit.FeatureAlphaDropout, (4, 3, 5)),
    ],
)
def test_each_torch_module_maps_to_its_dropkit_namesake(source, target, shape):
    _assert_trains_like(source, dropkit.convert(source).model.train())
    x = torch.randn(shape)
    result = dropkit.convert(source.eval())
    assert type(result.model) is target and result.model.p == 0.3
    assert torch.equal(result.model(x), source(x))
    # The replacement draws dropkit's Philox masks: reproducible under manual_seed.
    result.model.train()
    torch.manual_seed(3)
    first = result.model(x)
    torch.manual_seed(3)
    assert torch.equal(first, result.model(x))


def _assert_trains_like(source: nn.Module, converted: nn.Module) -> None:
    """Training outputs of a converted torch module against torch's own, on a large input."""
    source = source.train()
    channelwise = isinstance(source, (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d))
    shape = {nn.Dropout1d: (2000, 4, 5), nn.Dropout2d: (1000, 4, 2, 5),
             nn.Dropout3d: (500, 4, 2, 2, 5), nn.FeatureAlphaDropout: (2000, 4, 5)}
    x = torch.randn(shape.get(type(source), (2000, 20)))
    torch.manual_seed(0)
    theirs, ours = source(x), converted(x)
    if isinstance(source, nn.AlphaDropout) or isinstance(source, nn.FeatureAlphaDropout):
        # Alpha dropout keeps a standard normal input at mean 0 and variance 1;
        # 40000 values, so 6 standard errors of the mean are 0.03.
        for y in (theirs, ours):
            assert abs(float(y.mean())) < 0.03 and abs(float(y.std()) - 1.0) < 0.05
        return
    for y in (theirs, ours):
        kept = y != 0
        assert torch.allclose(y[kept], x[kept] / (1 - source.p))
        if channelwise:  # whole channels are dropped, in both
            assert bool(((y == 0).all(-1) == (y == 0).any(-1)).all())
    _assert_same_rate(source, converted, x, tuple(range(1, x.dim())))


def test_training_flag_inplace_and_hooks_are_preserved():
    calls = []
    dropout = nn.Dropout(0.2, inplace=True)
    dropout.register_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    model = nn.Sequential(nn.Linear(3, 3), dropout)
    model.train()
    converted = dropkit.convert(model).model
    assert converted[1].training and converted[1].inplace
    converted(torch.randn(2, 3))
    assert calls == ["Dropout"] and isinstance(converted[1], dropkit.Dropout)


def test_shared_module_is_converted_once_and_stays_shared():
    shared = nn.Dropout(0.4)
    model = nn.Sequential(nn.Linear(2, 2), shared, nn.Linear(2, 2), shared)
    result = dropkit.convert(model, inplace=True)
    assert model[1] is model[3] and isinstance(model[1], dropkit.Dropout)
    assert [c.name for c in result.changed] == ["1"]


def test_conversion_is_idempotent_and_leaves_subclasses_alone():
    class MyDropout(nn.Dropout):
        pass

    model = nn.Sequential(nn.Dropout(0.1), MyDropout(0.2))
    first = dropkit.convert(model)
    assert [c.name for c in first.changed] == ["0"]
    assert type(first.model[1]) is MyDropout
    second = dropkit.convert(first.model)
    assert second.changed == [] and second.skipped == []
    assert type(model[0]) is nn.Dropout  # inplace=False left the original alone


def test_convert_rejects_bad_arguments():
    with pytest.raises(TypeError, match="convert expects an nn.Module, but got list"):
        dropkit.convert([nn.Dropout()])
    with pytest.raises(TypeError, match="inplace has to be a bool, but got 'yes'"):
        dropkit.convert(nn.Dropout(), inplace="yes")


def test_real_timm_modules_convert_when_timm_imports():
    timm_layers = pytest.importorskip("timm.layers", reason="timm needs torchvision here")
    model = nn.Sequential(nn.Linear(4, 4), timm_layers.DropPath(0.1), nn.Dropout(0.2)).eval()
    result = dropkit.convert(model)
    x = torch.randn(3, 4)
    assert torch.equal(result.model(x), model(x))
    assert "1" in {c.name for c in result.changed} | {s.name for s in result.skipped}


def test_set_p_sets_every_dropout_layer_or_only_the_given_types():
    model = nn.Sequential(
        nn.Linear(2, 2), nn.Dropout(0.5), dropkit.Dropout2d(0.3), nn.Sequential(nn.Dropout(0.1))
    )
    assert dropkit.set_p(model, 0.2) == ["1", "2", "3.0"]
    assert [model[1].p, model[2].p, model[3][0].p] == [0.2, 0.2, 0.2]
    assert dropkit.set_p(model, 0.4, types=nn.Dropout2d) == ["2"]
    assert [model[1].p, model[2].p] == [0.2, 0.4]


def test_set_p_covers_dropkit_variants_by_package():
    class Variant(nn.Module):
        __module__ = "dropkit.nn.recurrent"

        def __init__(self):
            super().__init__()
            self.p = 0.5

    class NotDropout(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = 0.5  # a float p outside dropkit.nn is not a dropout layer

    model = nn.Sequential(Variant(), NotDropout())
    assert dropkit.set_p(model, 0.1) == ["0"]
    assert (model[0].p, model[1].p) == (0.1, 0.5)


@pytest.mark.parametrize("p, error, message", [
    (1.5, ValueError, "between 0 and 1, but got 1.5"),
    ("0.1", TypeError, "float between 0 and 1, but got '0.1'"),
])
def test_set_p_rejects_bad_rates(p, error, message):
    with pytest.raises(error, match=message):
        dropkit.set_p(nn.Dropout(), p)


def test_set_p_rejects_bad_types():
    with pytest.raises(TypeError, match="types has to be an nn.Module subclass .* got 'Dropout'"):
        dropkit.set_p(nn.Dropout(), 0.1, types="Dropout")
