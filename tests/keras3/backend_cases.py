"""dropkit.keras on one Keras backend: run by test_keras.py in a process of its own.

Keras fixes its backend at import, so each backend gets a fresh interpreter
(``KERAS_BACKEND`` set by the caller). Every case compares with the torch ops
of ``dropkit.functional``: the contract says the same seed and offset give the
same mask on every backend.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import torch

import dropkit.functional as F
import dropkit.keras as dk
from dropkit.keras import functional as KF

BACKEND = keras.backend.backend()


def _np(value) -> np.ndarray:
    return keras.ops.convert_to_numpy(value)


def _x(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randn(*shape).astype("float32")


def _torch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def _nchw(x):
    return _torch(x).permute(0, 3, 1, 2)


# (layer, the torch op on the same logical input for offset k, exact?)
CASES = {
    "Dropout": (
        lambda: dk.Dropout(0.3, seed=11),
        lambda x, k: F.dropout(_torch(x), 0.3, seed=11, offset=k), True,
    ),
    "Dropout-noise_shape": (
        lambda: dk.Dropout(0.4, noise_shape=(None, 1, None), seed=5),
        lambda x, k: F.dropout(_torch(x), 0.4, broadcast_dims=(1,), seed=5, offset=k), True,
    ),
    "SpatialDropout1D": (
        lambda: dk.SpatialDropout1D(0.5, seed=3),
        lambda x, k: F.spatial_dropout(_torch(x), 0.5, channels_last=True, seed=3, offset=k),
        True,
    ),
    "AlphaDropout": (
        lambda: dk.AlphaDropout(0.2, seed=9),
        lambda x, k: F.alpha_dropout(_torch(x), 0.2, True, seed=9, offset=k), True,
    ),
    "DropPath": (
        lambda: dk.DropPath(0.5, seed=1),
        lambda x, k: F.drop_path(_torch(x), 0.5, seed=1, offset=k), True,
    ),
    "GaussianDropout": (
        lambda: dk.GaussianDropout(0.3, seed=2),
        lambda x, k: F.gaussian_dropout(_torch(x), 0.3, seed=2, offset=k), False,
    ),
    "GaussianNoise": (
        lambda: dk.GaussianNoise(0.5, seed=4),
        lambda x, k: F.gaussian_noise(_torch(x), 0.5, seed=4, offset=k), False,
    ),
}
IMAGE_CASES = {
    "SpatialDropout2D": (
        lambda: dk.SpatialDropout2D(0.5, seed=3),
        lambda x, k: F.dropout2d(_nchw(x), 0.5, True, seed=3, offset=k).permute(0, 2, 3, 1),
        True,
    ),
    "DropBlock2D": (
        lambda: dk.DropBlock2D(0.2, 3, seed=6),
        lambda x, k: F.drop_block2d(_nchw(x), 0.2, 3, seed=6, offset=k).permute(0, 2, 3, 1),
        True,
    ),
    "DropBlock2D-shared": (
        lambda: dk.DropBlock2D(0.2, (2, 3), seed=6, share_channels=True),
        lambda x, k: F.drop_block2d(
            _nchw(x), 0.2, (2, 3), share_channels=True, seed=6, offset=k
        ).permute(0, 2, 3, 1),
        True,
    ),
}


def _compare(got: np.ndarray, want: torch.Tensor, exact: bool) -> None:
    want = want.numpy()
    if exact:
        assert np.array_equal(got, want)
    else:
        # Normals in float32 Box-Muller against torch's float64: a few float32 ulps
        # of the noise, which is O(1) here.
        np.testing.assert_allclose(got, want, rtol=0, atol=5e-6 * (1 + np.abs(want)).max())


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_draws_the_torch_mask_for_call_k(name):
    make, reference, exact = CASES[name]
    layer = make()
    x = _x(6, 7, 5)
    for k in range(3):
        _compare(_np(layer(x, training=True)), reference(x, k), exact)


@pytest.mark.parametrize("name", sorted(IMAGE_CASES))
def test_image_layer_draws_the_torch_mask_in_nchw_order(name):
    make, reference, exact = IMAGE_CASES[name]
    layer = make()
    x = _x(3, 8, 9, 4)
    for k in range(2):
        _compare(_np(layer(x, training=True)), reference(x, k), exact)


def test_spatial_dropout3d_and_channels_first():
    x = _x(2, 3, 4, 5, 6)
    layer = dk.SpatialDropout3D(0.5, data_format="channels_first", seed=8)
    want = F.dropout3d(_torch(x), 0.5, True, seed=8, offset=0)
    assert np.array_equal(_np(layer(x, training=True)), want.numpy())


@pytest.mark.parametrize("name", sorted(CASES) + sorted(IMAGE_CASES))
def test_inference_is_the_identity_and_draws_nothing(name):
    make = {**CASES, **IMAGE_CASES}[name][0]
    layer = make()
    x = _x(3, 8, 9, 4) if name in IMAGE_CASES else _x(4, 5, 6)
    before = _np(layer.seed_generator.state).copy()
    assert np.array_equal(_np(layer(x)), x)
    assert np.array_equal(_np(layer(x, training=False)), x)
    assert np.array_equal(_np(layer.seed_generator.state), before)


@pytest.mark.parametrize("name", sorted(CASES) + sorted(IMAGE_CASES))
def test_config_round_trip(name):
    layer = {**CASES, **IMAGE_CASES}[name][0]()
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_keras_file_round_trip_continues_the_stream(tmp_path):
    model = keras.Sequential(
        [keras.Input((12,)), keras.layers.Dense(8), dk.Dropout(0.5, seed=21)]
    )
    x = _x(4, 12)
    layer = model.layers[-1]
    layer(x, training=True)  # call 0
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    hidden = _np(loaded.layers[0](x))
    want = F.dropout(_torch(hidden), 0.5, seed=21, offset=1)
    assert isinstance(loaded.layers[-1], dk.Dropout)
    assert np.array_equal(_np(loaded.layers[-1](hidden, training=True)), want.numpy())


def test_seed_generator_is_accepted_and_gives_its_own_stream():
    generator = keras.random.SeedGenerator(17)
    layer = dk.Dropout(0.5, seed=generator)
    x = _x(5, 9)
    first, second = _np(layer(x, training=True)), _np(layer(x, training=True))
    assert np.array_equal(first, F.dropout(_torch(x), 0.5, seed=17, offset=0).numpy())
    assert np.array_equal(second, F.dropout(_torch(x), 0.5, seed=17, offset=1).numpy())


def test_half_precision_keeps_the_same_positions():
    x = _x(16, 33)
    for dtype in ("float16", "bfloat16"):
        got = _np(keras.ops.cast(KF.dropout(keras.ops.cast(x, dtype), 0.3, seed=4), "float32"))
        want = F.dropout(_torch(x), 0.3, seed=4).numpy()
        assert np.array_equal(got == 0, want == 0)
        # one rounding of the scaled value to the half type: 2**-8 relative for bf16
        np.testing.assert_allclose(got, want, rtol=2**-7, atol=0)


def test_drop_fraction_is_binomial():
    x = np.ones((200, 500), "float32")
    kept = (_np(KF.dropout(x, 0.3, seed=123)) != 0).mean()
    # 6 binomial standard deviations of the kept fraction over 100,000 draws
    bound = 6 * math.sqrt(0.3 * 0.7 / x.size)
    assert abs(kept - 0.7) < bound


def test_p_one_gives_zeros_even_for_inf():
    x = np.array([[np.inf, -np.inf, np.nan, 1.0]], "float32")
    assert np.array_equal(_np(KF.dropout(x, 1.0, seed=0)), np.zeros_like(x))


def test_model_training_advances_the_stream():
    if BACKEND == "numpy":
        pytest.skip("Keras' NumPy backend cannot fit")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), dk.Dropout(0.5, seed=3)])
    model.compile(optimizer="sgd", loss="mse", jit_compile=BACKEND != "torch")
    x, y = _x(8, 6), _x(8, 4)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    # two steps: the seed generator's counter (its second word) moved by two
    assert _np(model.layers[-1].seed_generator.state).tolist() == [3, 2]


def test_compiled_function_takes_seed_and_offset_as_inputs():
    x = _x(3, 40)
    if BACKEND == "jax":
        import jax

        function = jax.jit(lambda v, s, o: KF.dropout(v, 0.3, seed=s, offset=o))
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        function = tf.function(lambda v, s, o: KF.dropout(v, 0.3, seed=s, offset=o))
    else:
        pytest.skip("the torch backend runs dropkit's torch ops (compiled with torch.compile)")
    key = np.array([7, 0], dtype="uint32")
    for offset in (0, 9):
        got = _np(function(x, key, np.uint32(offset)))
        assert np.array_equal(got, F.dropout(_torch(x), 0.3, seed=7, offset=offset).numpy())


def _mc_model():
    inputs = keras.Input((10,))
    h = keras.layers.Dense(16)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = dk.Dropout(0.5, seed=1)(h)
    outputs = keras.layers.Dense(3)(h)
    return keras.Model(inputs, outputs)


def test_mc_predict_samples_dropout_only_and_is_reproducible():
    model = _mc_model()
    x = _x(7, 10)
    batchnorm = model.layers[2]
    moving = _np(batchnorm.moving_variance).copy()
    result = dk.mc_predict(model, x, samples=6, seed=5)
    again = dk.mc_predict(model, x, samples=6, seed=5)
    assert result.samples.shape == (6, 7, 3)
    assert torch.equal(result.samples, again.samples)
    assert not torch.equal(result.samples[0], result.samples[1])
    assert np.array_equal(_np(batchnorm.moving_variance), moving)
    assert result.mean.shape == (7, 3) and result.mutual_information.shape == (7,)
    assert bool((result.mutual_information >= 0).all())
    # inference afterwards is deterministic again
    assert np.array_equal(_np(model(x)), _np(model(x)))


def test_mc_predict_regression_adds_the_model_precision():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), dk.Dropout(0.3),
                              keras.layers.Dense(1)])
    result = dk.mc_predict(model, _x(5, 4), samples=20, seed=0, task="regression", tau=4.0)
    assert torch.allclose(result.variance, result.epistemic_variance + 0.25)


def test_mc_predict_refuses_a_model_without_dropkit_layers():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2), keras.layers.Dropout(0.5)])
    with pytest.raises(ValueError, match="no dropkit.keras layer"):
        dk.mc_predict(model, _x(2, 4), samples=2)


def test_check_reports_dropout_before_batchnorm():
    model = keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(8), dk.Dropout(0.5, name="drop"),
        keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(2),
    ])
    findings = dk.check(model)
    assert [(f.code, f.module) for f in findings] == [("dropout-before-batchnorm", "drop")]
    assert dk.check(_mc_model()) == []


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: dk.Dropout(1.5), ValueError, "between 0 and 1, but got 1.5"),
        (lambda: dk.Dropout("0.5"), TypeError, "'0.5'"),
        (lambda: dk.Dropout(0.5, seed=-1), ValueError, "got -1"),
        (lambda: dk.Dropout(0.5, seed=1.5), TypeError, "1.5"),
        (lambda: dk.Dropout(0.5, noise_shape=(2, 0)), ValueError, "noise_shape"),
        (lambda: dk.DropBlock2D(0.1, 0), ValueError, "block_size"),
        (lambda: dk.SpatialDropout2D(0.1, data_format="nhwc"), ValueError, "nhwc"),
        (lambda: dk.GaussianDropout(1.0), ValueError, "infinite"),
        (lambda: dk.GaussianNoise(-1.0), ValueError, "-1.0"),
    ],
)
def test_bad_arguments_raise_at_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_shapes_name_the_shape():
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        KF.dropout(_x(2, 3), 0.5, seed=0, noise_shape=(2, 2))
    with pytest.raises(ValueError, match="larger than the feature map"):
        dk.DropBlock2D(0.1, 5, seed=0)(_x(1, 3, 3, 2), training=True)


def test_keras_layer_and_torch_module_draw_the_same_stream():
    # Both take offset k on training call k of a module seeded with S (dropkit.nn.base).
    ours, theirs = dk.Dropout(0.3, seed=11), dropkit_torch_module(0.3, seed=11)
    x = _x(6, 10)
    for _ in range(3):
        assert np.array_equal(_np(ours(x, training=True)), theirs(_torch(x)).numpy())


def dropkit_torch_module(p: float, seed: int) -> torch.nn.Module:
    import dropkit

    return dropkit.Dropout(p, seed=seed).train()


def test_backend_multiply_high_equals_the_portable_16_bit_products():
    # jax and numpy take their own multiply-high; the 16-bit path serves the others
    # (TensorFlow), so it is checked on every backend, edge values included.
    from dropkit.keras import _philox

    values = np.concatenate([
        np.array([0, 1, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF], dtype=np.uint32),
        np.random.default_rng(3).integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32),
    ])
    for multiplier in (_philox._M0, _philox._M1):
        wide = values.astype(np.uint64) * np.uint64(multiplier)
        want = ((wide >> np.uint64(32)).astype(np.uint32), wide.astype(np.uint32))
        for path in (_philox._mulhilo, _philox._mulhilo_16):
            hi, lo = path(multiplier, _philox.u32(values))
            assert np.array_equal(_np(hi), want[0]) and np.array_equal(_np(lo), want[1])
