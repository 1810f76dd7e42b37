"""Keras 3 layers on dropkit's Philox contract.

Every layer follows Keras' conventions (``call(inputs, training=None)``, a
``get_config``/``from_config`` round trip, ``.keras`` saving, ``seed`` as an
int or a :class:`keras.random.SeedGenerator`) and Keras' argument names where
Keras has the layer. The randomness is dropkit's: with ``seed=S``, the
``k``-th training call of a layer draws the mask of
``dropkit.functional.<op>(x, ..., seed=S, offset=k)``: the same mask as the
torch op, on every backend. The call counter is the state of the layer's
``SeedGenerator`` (``[S, k]``), so it is saved with the model and a reloaded
model continues the stream; under ``jax.jit`` it is advanced by Keras'
stateless scope like every other Keras RNG state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import keras
from keras import ops

from dropkit.functional import validate_p
from dropkit.keras import functional as KF

__all__ = [
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianDropout",
    "GaussianNoise",
    "AlphaDropout",
    "DropBlock2D",
    "DropPath",
    "DropkitLayer",
]

SeedLike = Union[int, "keras.random.SeedGenerator", None]
_register = keras.saving.register_keras_serializable(package="dropkit")


def _check_seed(seed: SeedLike) -> SeedLike:
    if seed is None or isinstance(seed, keras.random.SeedGenerator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(
            f"seed must be None, an int in [0, 2**32) or a keras.random.SeedGenerator, "
            f"got {seed!r}"
        )
    # Keras' SeedGenerator keeps its seed in a uint32 word, which bounds it here too.
    if not 0 <= seed < 1 << 32:
        raise ValueError(f"seed must be in [0, 2**32) (a Keras seed word), got {seed}")
    return seed


class DropkitLayer(keras.layers.Layer):
    """Base of dropkit's Keras layers: the seed stream and the MC-dropout switch.

    Subclasses implement ``_sample(inputs, key, offset)``, the training-time
    output for one draw of the stream.
    """

    def __init__(self, seed: SeedLike = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seed = _check_seed(seed)
        self.seed_generator = (
            seed if isinstance(seed, keras.random.SeedGenerator)
            else keras.random.SeedGenerator(seed)
        )
        self.supports_masking = True
        self.built = True
        # Set by dropkit.keras.mc_predict: (key, offset) for a sampling pass at inference.
        self._mc_stream = None

    def call(self, inputs, training=None):
        if self._mc_stream is not None:
            key, offset = self._mc_stream
            return self._sample(inputs, key, offset)
        if not training or not self._active():
            return inputs
        state = self.seed_generator.next()
        key = ops.stack([state[0], ops.zeros_like(state[0])])
        return self._sample(inputs, key, state[1])

    def _active(self) -> bool:
        return True

    def _sample(self, inputs, key, offset):  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return input_shape

    # The stream's counter is saved with the model, so a reloaded model continues it
    # instead of repeating the masks it already drew.
    def save_own_variables(self, store) -> None:
        store["seed_generator_state"] = ops.convert_to_numpy(self.seed_generator.state)

    def load_own_variables(self, store) -> None:
        if "seed_generator_state" in store:
            self.seed_generator.state.assign(
                ops.cast(store["seed_generator_state"][...], self.seed_generator.state.dtype)
            )

    def get_config(self) -> dict:
        config = super().get_config()
        config["seed"] = self.seed if isinstance(self.seed, int) else None
        return config


class _RateLayer(DropkitLayer):
    def __init__(self, rate: float, seed: SeedLike = None, **kwargs) -> None:
        super().__init__(seed=seed, **kwargs)
        self.rate = validate_p(rate, "rate")

    def _active(self) -> bool:
        return self.rate > 0.0

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate}


def _check_noise_shape(noise_shape: Optional[Sequence]) -> Optional[tuple]:
    if noise_shape is None:
        return None
    if isinstance(noise_shape, (str, bytes)) or not isinstance(noise_shape, Sequence):
        raise TypeError(f"noise_shape must be None or a sequence of ints/None, got {noise_shape!r}")
    for entry in noise_shape:
        if entry is not None and not (isinstance(entry, int) and not isinstance(entry, bool)
                                      and entry >= 1):
            raise ValueError(
                f"noise_shape entries must be positive ints or None, got {noise_shape!r}"
            )
    return tuple(noise_shape)


@_register
class Dropout(_RateLayer):
    """Inverted dropout (Srivastava et al., 2014, "Dropout: a simple way to prevent neural
    networks from overfitting"): zero each element with probability ``rate`` in
    training and scale survivors by ``1 / (1 - rate)``; identity at inference.

    The default regulariser for dense layers (``rate`` 0.2-0.5). Same arguments
    as ``keras.layers.Dropout``; the mask of call ``k`` with ``seed=S`` equals
    ``dropkit.functional.dropout(x, rate, seed=S, offset=k)`` on every backend.

    Example::

        >>> layer = dropkit.keras.Dropout(0.5, seed=0)
        >>> y = layer(x, training=True)
    """

    def __init__(self, rate: float, noise_shape=None, seed: SeedLike = None, **kwargs) -> None:
        super().__init__(rate, seed=seed, **kwargs)
        self.noise_shape = _check_noise_shape(noise_shape)

    def _sample(self, inputs, key, offset):
        return KF.dropout(inputs, self.rate, seed=key, offset=offset, noise_shape=self.noise_shape)

    def get_config(self) -> dict:
        return {**super().get_config(), "noise_shape": self.noise_shape}


def _data_format(data_format: Optional[str]) -> str:
    data_format = keras.config.image_data_format() if data_format is None else data_format
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}"
        )
    return data_format


class _SpatialDropout(_RateLayer):
    _rank = 2

    def __init__(self, rate: float, data_format: Optional[str] = None, seed: SeedLike = None,
                 **kwargs) -> None:
        super().__init__(rate, seed=seed, **kwargs)
        self.data_format = _data_format(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=self._rank + 2)

    def _noise_shape(self, shape) -> tuple:
        if len(shape) != self._rank + 2:
            raise ValueError(
                f"{type(self).__name__} expects a {self._rank + 2}-D input, but got shape "
                f"{tuple(shape)}"
            )
        ones = (1,) * self._rank
        if self.data_format == "channels_last":
            return (shape[0], *ones, shape[-1])
        return (shape[0], shape[1], *ones)

    def _sample(self, inputs, key, offset):
        noise_shape = self._noise_shape(tuple(inputs.shape))
        return KF.dropout(inputs, self.rate, seed=key, offset=offset, noise_shape=noise_shape)

    def get_config(self) -> dict:
        return {**super().get_config(), "data_format": self.data_format}


@_register
class SpatialDropout1D(_SpatialDropout):
    """Drop whole feature channels of ``(N, steps, C)`` sequences (Tompson et al., 2015,
    "Efficient object localization using convolutional networks"); as Keras'
    ``SpatialDropout1D``. Use after 1-D convolutions, where neighbouring steps correlate."""

    _rank = 1

    def __init__(self, rate: float, seed: SeedLike = None, **kwargs) -> None:
        super().__init__(rate, data_format="channels_last", seed=seed, **kwargs)

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("data_format")
        return config


@_register
class SpatialDropout2D(_SpatialDropout):
    """Drop whole feature maps of images (Tompson et al., 2015); as Keras'
    ``SpatialDropout2D``. Use after convolutions instead of element-wise dropout."""

    _rank = 2


@_register
class SpatialDropout3D(_SpatialDropout):
    """Drop whole feature volumes of 5-D inputs (Tompson et al., 2015); as Keras'
    ``SpatialDropout3D``, for 3-D CNNs on video or volumes."""

    _rank = 3


@_register
class AlphaDropout(_RateLayer):
    """Alpha dropout for SELU networks (Klambauer et al., 2017, "Self-normalizing neural
    networks"): dropped units take SELU's saturation value and an affine map keeps
    zero mean and unit variance. As Keras' ``AlphaDropout``."""

    def __init__(self, rate: float, noise_shape=None, seed: SeedLike = None, **kwargs) -> None:
        super().__init__(rate, seed=seed, **kwargs)
        self.noise_shape = _check_noise_shape(noise_shape)

    def _sample(self, inputs, key, offset):
        return KF.alpha_dropout(
            inputs, self.rate, seed=key, offset=offset, noise_shape=self.noise_shape
        )

    def get_config(self) -> dict:
        return {**super().get_config(), "noise_shape": self.noise_shape}


@_register
class GaussianDropout(_RateLayer):
    """Multiplicative ``N(1, rate / (1 - rate))`` noise (Srivastava et al., 2014, s.10);
    as Keras' ``GaussianDropout``. Use where zeros hurt."""

    def __init__(self, rate: float, seed: SeedLike = None, **kwargs) -> None:
        super().__init__(rate, seed=seed, **kwargs)
        if self.rate == 1.0:
            raise ValueError(
                "GaussianDropout rate has to be in [0, 1): the noise variance is infinite "
                "at 1, but got 1.0"
            )

    def _sample(self, inputs, key, offset):
        return KF.gaussian_dropout(inputs, self.rate, seed=key, offset=offset)


@_register
class GaussianNoise(DropkitLayer):
    """Additive ``N(0, stddev**2)`` noise (Bishop, 1995, "Training with noise is equivalent
    to Tikhonov regularization"); as Keras' ``GaussianNoise``, for real-valued inputs."""

    def __init__(self, stddev: float, seed: SeedLike = None, **kwargs) -> None:
        super().__init__(seed=seed, **kwargs)
        if isinstance(stddev, bool) or not isinstance(stddev, (int, float)) or not (
            stddev >= 0 and stddev != float("inf")
        ):
            raise ValueError(f"stddev has to be a finite non-negative float, but got {stddev!r}")
        self.stddev = float(stddev)

    def _active(self) -> bool:
        return self.stddev > 0.0

    def _sample(self, inputs, key, offset):
        return KF.gaussian_noise(inputs, self.stddev, seed=key, offset=offset)

    def get_config(self) -> dict:
        return {**super().get_config(), "stddev": self.stddev}


@_register
class DropBlock2D(_RateLayer):
    """DropBlock (Ghiasi, Lin & Le, 2018, "DropBlock: A regularization method for
    convolutional networks"): zero contiguous ``block_size`` squares of each feature
    map. Use after the later convolutional stages of a CNN; keras-cv's
    ``DropBlock2D`` takes the same ``rate``, ``block_size``, ``data_format``, ``seed``.
    """

    def __init__(self, rate: float, block_size=7, data_format: Optional[str] = None,
                 seed: SeedLike = None, share_channels: bool = False, **kwargs) -> None:
        super().__init__(rate, seed=seed, **kwargs)
        self.block_size = KF.check_block_size(block_size, "DropBlock2D")
        self.data_format = _data_format(data_format)
        self.share_channels = bool(share_channels)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def _sample(self, inputs, key, offset):
        return KF.drop_block2d(
            inputs, self.rate, self.block_size, seed=key, offset=offset,
            data_format=self.data_format, share_channels=self.share_channels,
        )

    def get_config(self) -> dict:
        return {
            **super().get_config(), "block_size": list(self.block_size),
            "data_format": self.data_format, "share_channels": self.share_channels,
        }


@_register
class DropPath(_RateLayer):
    """Stochastic depth (Huang, Sun, Liu, Sedra & Weinberger, 2016, "Deep networks with
    stochastic depth"): drop a sample's whole residual branch with probability ``rate``.
    Apply it to the branch: ``x + DropPath(0.1)(f(x))``."""

    def __init__(self, rate: float, scale_by_keep: bool = True, seed: SeedLike = None,
                 **kwargs) -> None:
        super().__init__(rate, seed=seed, **kwargs)
        self.scale_by_keep = bool(scale_by_keep)

    def _sample(self, inputs, key, offset):
        return KF.drop_path(
            inputs, self.rate, seed=key, offset=offset, scale_by_keep=self.scale_by_keep
        )

    def get_config(self) -> dict:
        return {**super().get_config(), "scale_by_keep": self.scale_by_keep}
