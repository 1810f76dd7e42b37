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

import torch
from torch import Tensor, nn
from torch.func import functional_call

from dropkit.functional import dropout, validate_p
from dropkit.random import draw_seed

__all__ = ["drop_connect", "DropConnect"]

_DROP_CONNECT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def drop_connect(
    weight: Tensor,
    p: float = 0.5,
    training: bool = True,
    *,
    seed: Optional[int] = None,
    offset: int = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Zero each weight with probability ``p`` and scale survivors by ``1 / (1 - p)``.

    Wan, Zeiler, Zhang, LeCun & Fergus (2013), "Regularization of neural networks
    using DropConnect" (ICML). Pass the result to the layer's functional form,
    e.g. ``F.linear(x, drop_connect(w, 0.5), b)``; one mask serves the whole batch.

    Example::

        >>> w = torch.randn(10, 20, requires_grad=True)
        >>> y = torch.nn.functional.linear(torch.randn(4, 20), drop_connect(w, 0.5, seed=0))
    """
    return dropout(weight, p, training, seed=seed, offset=offset, generator=generator)


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


def _forward_dropped(
    module: nn.Module,
    names: tuple[str, ...],
    p: float,
    seed: Optional[int],
    args: tuple,
    kwargs: dict,
) -> Any:
    # One seed per forward, one offset per parameter: independent masks that a
    # single integer reproduces.
    seed = draw_seed() if seed is None else seed
    params = dict(module.named_parameters())
    dropped = {
        name: dropout(params[name], p, seed=seed, offset=index)
        for index, name in enumerate(names)
    }
    return functional_call(module, dropped, args, kwargs)


class _DroppedParameters(nn.Module):
    """Holds ``module`` and runs it with named parameters masked during training."""

    def __init__(
        self, module: nn.Module, names: Sequence[str], p: float, seed: Optional[int]
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"{type(self).__name__} wraps an nn.Module, but got {type(module).__name__}"
            )
        self.module = module
        self.weights = _check_parameters(module, names, type(self).__name__)
        self.p = validate_p(p)
        self.seed = seed

    def extra_repr(self) -> str:
        return f"p={self.p}, weights={list(self.weights)}"

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.training or self.p == 0.0:
            return self.module(*args, **kwargs)
        return _forward_dropped(self.module, self.weights, self.p, self.seed, args, kwargs)


class DropConnect(_DroppedParameters):
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
    ) -> None:
        if not isinstance(module, _DROP_CONNECT_LAYERS):
            allowed = ", ".join(cls.__name__ for cls in _DROP_CONNECT_LAYERS)
            raise TypeError(
                f"DropConnect wraps one of {allowed}, but got {type(module).__name__}; "
                "use WeightDrop(module, weights=[...]) for other modules"
            )
        names = ("weight", "bias") if drop_bias and module.bias is not None else ("weight",)
        super().__init__(module, names, p, seed)
