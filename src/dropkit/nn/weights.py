"""Dropout on weights instead of activations: DropConnect.

The wrapped layer keeps its parameters; each training forward runs it through
:func:`torch.func.functional_call` with masked copies of the chosen parameters,
so gradients flow to the originals, ``state_dict`` keys are only prefixed by
``module.``, and no parameter is deleted or re-registered (the trick older
copies used, which broke ``nn.LSTM``'s flat weights and ``deepcopy``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from torch import nn
from torch.func import functional_call

from dropkit import _ops
from dropkit import functional as F
from dropkit.functional.checks import validate_p
from dropkit.nn.base import SeedStream
from dropkit.random import draw_seed

__all__ = ["DropConnect", "DroppedParameters"]

_DROP_CONNECT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_parameters(module: nn.Module, names: Sequence[str], owner: str) -> tuple[str, ...]:
    if isinstance(names, str):
        names = (names,)
    available = dict(module.named_parameters())
    names = tuple(names)
    if not names:
        raise ValueError(f"{owner} needs at least one parameter name, but got {names!r}")
    for name in names:
        if name not in available:
            raise ValueError(
                f"{owner}: {type(module).__name__} has no parameter {name!r}; "
                f"its parameters are {sorted(available)}"
            )
    return names


class DroppedParameters(SeedStream, nn.Module):
    """Holds ``module`` and runs it with named parameters masked during training.

    The base of :class:`DropConnect` and :class:`~dropkit.nn.recurrent.WeightDrop`.
    One seed per forward, one offset per parameter: independent masks that a
    single integer reproduces.
    """

    def __init__(
        self,
        module: nn.Module,
        names: Sequence[str],
        p: float,
        seed: Optional[int],
        fixed_mask: bool = False,
        persist_stream: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"{type(self).__name__} wraps an nn.Module, but got {type(module).__name__}"
            )
        self.module = module
        self.weights = _check_parameters(module, names, type(self).__name__)
        self.p = validate_p(p)
        self._init_stream(seed, fixed_mask, persist_stream)

    def extra_repr(self) -> str:
        return f"p={self.p}, weights={list(self.weights)}"

    def forward_dropped(self, args: tuple, kwargs: dict) -> Any:
        """Run the wrapped module once with this call's masked parameters."""
        seed = self.seed
        if seed is None and not _ops.graph_building():
            seed = draw_seed()
        # Compiled and unseeded: each mask draws its own seed as a tensor (an int
        # drawn here would be a data-dependent guard).
        first = self._next_offset(len(self.weights))
        params = dict(self.module.named_parameters())
        dropped = {
            name: F.dropout(params[name], self.p, seed=seed, offset=first + index)
            for index, name in enumerate(self.weights)
        }
        return functional_call(self.module, dropped, args, kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.training or self.p == 0.0:
            return self.module(*args, **kwargs)
        return self.forward_dropped(args, kwargs)


class DropConnect(DroppedParameters):
    """Wrap a ``Linear``/``Conv1d/2d/3d`` layer so training drops its weights, not its outputs.

    Wan et al. (2013), "Regularization of neural networks using DropConnect".
    Use it on wide fully connected or convolutional layers as a stronger,
    finer-grained alternative to dropout on their outputs.

    Deliberate difference from the paper: one weight mask per forward pass
    (shared by the batch, as in every practical implementation) and inverted
    scaling, so inference is the plain layer instead of the paper's Gaussian
    moment-matching. ``drop_bias=True`` masks the bias too.

    Shape: the wrapped layer's.

    Example::

        >>> layer = dropkit.DropConnect(torch.nn.Linear(128, 64), p=0.5)
        >>> y = layer(torch.randn(32, 128))
    """

    def __init__(
        self,
        module: nn.Module,
        p: float = 0.5,
        *,
        drop_bias: bool = False,
        seed: Optional[int] = None,
        fixed_mask: bool = False,
        persist_stream: bool = False,
    ) -> None:
        if not isinstance(module, _DROP_CONNECT_LAYERS):
            allowed = ", ".join(cls.__name__ for cls in _DROP_CONNECT_LAYERS)
            raise TypeError(
                f"DropConnect wraps one of {allowed}, but got {type(module).__name__}; "
                "use WeightDrop(module, weights=[...]) for other modules"
            )
        names = ("weight", "bias") if drop_bias and module.bias is not None else ("weight",)
        super().__init__(module, names, p, seed, fixed_mask, persist_stream)
