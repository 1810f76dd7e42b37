"""convert() and set_p() on torch.nn, timm-style and torchvision-style models.

timm and torchvision do not import beside torch 2.13.0 here, so the peers'
modules are re-created below with their real module paths and attributes (the
behaviour is copied from timm.layers.drop and torchvision.ops); convert()
recognises peers by class name and package, exactly as it would the originals.
"""

import pytest
import torch
from torch import nn

import dropkit
import dropkit.nn


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


class _RecordingDropPath(nn.Module):
    """Test double with the DropPath signature the variants brief fixes:
    DropPath(p=0.1, *, scale_by_keep=True, seed=None)."""

    def __init__(self, p: float = 0.1, *, scale_by_keep: bool = True, seed=None):
        super().__init__()
        self.p, self.scale_by_keep, self.seed = p, scale_by_keep, seed

    def forward(self, x):
        return x


class _RecordingDropBlock2d(nn.Module):
    def __init__(self, p: float = 0.1, block_size: int = 7, *, batchwise=False, seed=None):
        super().__init__()
        self.p, self.block_size, self.batchwise = p, block_size, batchwise

    def forward(self, x):
        return x


def test_peer_mapping_passes_rate_and_options(monkeypatch):
    monkeypatch.setattr(dropkit.nn, "DropPath", _RecordingDropPath, raising=False)
    monkeypatch.setattr(dropkit.nn, "DropBlock2d", _RecordingDropBlock2d, raising=False)
    model = nn.Sequential(
        DropPath(0.25, scale_by_keep=False),
        StochasticDepth(0.3, "row"),
        StochasticDepth(0.3, "batch"),
        TimmDropBlock2d(0.15, block_size=5),
        TimmDropBlock2d(0.15, block_size=5, with_noise=True),
    )
    result = dropkit.convert(model, inplace=True)
    assert result.model is model
    assert (model[0].p, model[0].scale_by_keep) == (0.25, False)
    assert (model[1].p, model[1].scale_by_keep) == (0.3, True)
    assert (model[3].p, model[3].block_size) == (0.15, 5)
    skipped = {s.name: s.reason for s in result.skipped}
    assert "mode='batch'" in skipped["2"] and isinstance(model[2], StochasticDepth)
    assert "with_noise=True" in skipped["4"] and isinstance(model[4], TimmDropBlock2d)


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
