"""dropkit.nn standard modules: drop-in contract with torch.nn."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import dropkit

MODULES = [
    (dropkit.Dropout, nn.Dropout, (8, 32)),
    (dropkit.Dropout1d, nn.Dropout1d, (8, 16, 10)),
    (dropkit.Dropout2d, nn.Dropout2d, (8, 16, 5, 5)),
    (dropkit.Dropout3d, nn.Dropout3d, (4, 16, 3, 3, 3)),
    (dropkit.AlphaDropout, nn.AlphaDropout, (8, 32)),
    (dropkit.FeatureAlphaDropout, nn.FeatureAlphaDropout, (8, 16, 5, 5)),
]


@pytest.mark.parametrize("ours, theirs, shape", MODULES)
def test_drop_in_for_torch(ours, theirs, shape):
    module = ours(0.3)
    assert isinstance(module, theirs)
    assert repr(module) == repr(theirs(0.3))
    assert module.state_dict().keys() == theirs(0.3).state_dict().keys()
    x = torch.randn(shape)
    module.train()
    assert module(x).shape == x.shape
    module.eval()
    assert torch.equal(module(x), x)


@pytest.mark.parametrize("ours, theirs, shape", MODULES)
def test_serialisation_round_trips(ours, theirs, shape):
    module = ours(0.25, seed=4)
    x = torch.randn(shape)
    module(x)  # one call in: the copies carry the stream position with them
    clones = (copy.deepcopy(module), pickle.loads(pickle.dumps(module)))
    expected = module(x)
    for clone in clones:
        assert clone.p == 0.25 and clone.seed == 4
        assert torch.equal(clone(x), expected)
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    fresh = ours(0.25, seed=4)
    fresh.load_state_dict(torch.load(buffer))
    assert torch.equal(fresh(x), ours(0.25, seed=4)(x))


def test_module_eval_toggles_inside_a_model():
    model = nn.Sequential(nn.Linear(10, 100), dropkit.Dropout(0.5), nn.Linear(100, 1))
    x = torch.randn(16, 10)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(0)
    assert torch.equal(a, model(x))
    assert not torch.equal(a, model(x))


def test_classic_mode_module():
    layer = dropkit.Dropout(0.5, mode="classic")
    assert "mode='classic'" in repr(layer)
    layer.eval()
    assert torch.allclose(layer(torch.ones(3)), torch.full((3,), 0.5))


def test_spatial_dropout_module():
    layer = dropkit.SpatialDropout(0.5, channels_last=True, seed=1)
    assert repr(layer) == "SpatialDropout(p=0.5, inplace=False, channels_last=True)"
    y = layer(torch.ones(4, 7, 12))
    assert torch.equal(y, y[:, :1, :].expand_as(y))


@pytest.mark.parametrize("cls", [m[0] for m in MODULES] + [dropkit.SpatialDropout])
@pytest.mark.parametrize("p", [-0.5, 2.0, float("nan")])
def test_constructor_rejects_bad_p(cls, p):
    with pytest.raises(ValueError, match=f"but got {p}"):
        cls(p)


def test_constructor_rejects_bad_mode():
    with pytest.raises(ValueError, match="'sometimes'"):
        dropkit.Dropout(0.5, mode="sometimes")


def test_inplace_module_behaves_like_torchs():
    x = torch.randn(4, 8, requires_grad=True)
    nn.Sequential(nn.Linear(8, 8), dropkit.Dropout(0.5, inplace=True))(x).sum().backward()
    assert x.grad is not None
    # Like torch.nn.Dropout(inplace=True), overwriting ReLU's saved output breaks
    # its backward; dropkit.check flags this placement.
    for dropout in (nn.Dropout(0.5, inplace=True), dropkit.Dropout(0.5, inplace=True)):
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), dropout)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            model(x).sum().backward()
