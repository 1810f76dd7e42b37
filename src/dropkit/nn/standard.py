"""Drop-in replacements for ``torch.nn``'s dropout modules, on dropkit's Philox contract.

Each class subclasses its ``torch.nn`` namesake, so ``isinstance(m, nn.Dropout)``
checks in existing code (and ``model.eval()``) keep working, the constructor
and ``extra_repr`` are the same, and ``state_dict``/pickling are unchanged.
The extra keyword-only knobs are ``mode`` (``"inverted"`` or ``"classic"``)
and ``seed``/``fixed_mask``/``persist_stream`` (see :mod:`dropkit.nn.base`:
``None`` draws a fresh seed from torch's generator on every call, an int makes
the module's masks a reproducible stream).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from dropkit import functional as F
from dropkit.functional.checks import Mode, validate_mode, validate_p
from dropkit.nn.base import SeedStream

__all__ = [
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "SpatialDropout",
    "AlphaDropout",
    "FeatureAlphaDropout",
]


class _PhiloxDropout(SeedStream):
    """Shared state of dropkit's standard modules: the mode and the seed stream.

    ``p`` is checked once here (before torch's own check in ``super().__init__``,
    whose message does not name the allowed range) and kept as given, as torch
    keeps it: ``Dropout(0).p`` is ``0`` and prints ``p=0``.
    """

    def _init_dropkit(
        self,
        mode: Mode = "inverted",
        seed: Optional[int] = None,
        fixed_mask: bool = False,
        persist_stream: bool = False,
    ) -> None:
        self.mode = validate_mode(mode)
        self._init_stream(seed, fixed_mask, persist_stream)

    def extra_repr(self) -> str:
        extra = f"p={self.p}, inplace={self.inplace}"
        if getattr(self, "mode", "inverted") != "inverted":
            extra += f", mode={self.mode!r}"
        return extra

    def _options(self) -> dict:
        return {"seed": self.seed, "offset": self._next_offset() if self.training else 0}


class _TorchTwin(_PhiloxDropout):
    """The constructor of a ``torch.nn`` dropout module, ``(p, inplace)``, plus dropkit's
    keyword-only seed knobs (:mod:`dropkit.nn.base`); shared by the twins that add nothing."""

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        seed: Optional[int] = None,
        fixed_mask: bool = False,
        persist_stream: bool = False,
    ) -> None:
        validate_p(p)
        super().__init__(p, inplace)
        self._init_dropkit(seed=seed, fixed_mask=fixed_mask, persist_stream=persist_stream)


class Dropout(_PhiloxDropout, nn.Dropout):
    """Zero each element with probability ``p`` during training.

    Srivastava et al. (2014), "Dropout: a simple way to prevent neural networks
    from overfitting". The default regulariser for fully connected layers;
    typical ``p`` is 0.2-0.5 (0.5 for wide hidden layers, ~0.2 for inputs).

    Shape: any; output has the input's shape.

    Example::

        >>> layer = dropkit.nn.Dropout(0.5)
        >>> y = layer(torch.randn(32, 128))      # training: ~half zeroed, rest x2
        >>> layer.eval(); torch.equal(layer(x), x)  # inference: identity
    """

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        mode: Mode = "inverted",
        seed: Optional[int] = None,
        fixed_mask: bool = False,
        persist_stream: bool = False,
    ) -> None:
        validate_p(p)
        super().__init__(p, inplace)
        self._init_dropkit(mode, seed, fixed_mask, persist_stream)

    def forward(self, input: Tensor) -> Tensor:
        return F.dropout(
            input, self.p, self.training, self.inplace, mode=self.mode, **self._options()
        )


class Dropout1d(_TorchTwin, nn.Dropout1d):
    """Drop whole channels of ``(N, C, L)``/``(C, L)`` inputs (Tompson et al., 2015).

    Use after 1-D convolutions (audio, sequences as channels) where neighbouring
    positions are correlated and element-wise dropout barely regularises.
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.dropout1d(input, self.p, self.training, self.inplace, **self._options())


class Dropout2d(_TorchTwin, nn.Dropout2d):
    """Drop whole feature maps of ``(N, C, H, W)``/``(C, H, W)`` inputs.

    Tompson et al. (2015), "Efficient object localization using convolutional
    networks". The usual choice after convolutional blocks of a CNN.
    Unlike ``torch.nn.Dropout2d`` (which, for historical reasons, treats 3-D
    input as ``(N, C, L)``), a 3-D input is an unbatched ``(C, H, W)`` image.
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.dropout2d(input, self.p, self.training, self.inplace, **self._options())


class Dropout3d(_TorchTwin, nn.Dropout3d):
    """Drop whole volumes of ``(N, C, D, H, W)``/``(C, D, H, W)`` inputs (3-D CNNs, video)."""

    def forward(self, input: Tensor) -> Tensor:
        return F.dropout3d(input, self.p, self.training, self.inplace, **self._options())


class SpatialDropout(_PhiloxDropout, nn.Module):
    """Channel-wise dropout for inputs of any rank >= 3, channels first or last.

    Keras' ``SpatialDropout1D/2D/3D`` in one module. ``channels_last=True``
    suits ``(N, L, C)`` token features and NHWC images.
    """

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        channels_last: bool = False,
        seed: Optional[int] = None,
        fixed_mask: bool = False,
        persist_stream: bool = False,
    ) -> None:
        super().__init__()
        self.p = validate_p(p)
        self.inplace = inplace
        self.channels_last = channels_last
        self._init_dropkit(seed=seed, fixed_mask=fixed_mask, persist_stream=persist_stream)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", channels_last={self.channels_last}"

    def forward(self, input: Tensor) -> Tensor:
        return F.spatial_dropout(
            input,
            self.p,
            self.training,
            self.inplace,
            channels_last=self.channels_last,
            **self._options(),
        )


class AlphaDropout(_TorchTwin, nn.AlphaDropout):
    """Alpha dropout for SELU networks (Klambauer et al., 2017): keeps mean 0 and variance 1."""

    def forward(self, input: Tensor) -> Tensor:
        return F.alpha_dropout(input, self.p, self.training, self.inplace, **self._options())


class FeatureAlphaDropout(_TorchTwin, nn.FeatureAlphaDropout):
    """Channel-wise alpha dropout for SELU CNNs: one mask value per (sample, channel)."""

    def forward(self, input: Tensor) -> Tensor:
        return F.feature_alpha_dropout(
            input, self.p, self.training, self.inplace, **self._options()
        )


