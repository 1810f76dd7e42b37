"""The max-norm constraint that Srivastava et al. pair with dropout.

Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov (2014), "Dropout: a
simple way to prevent neural networks from overfitting" (JMLR 15), section 5.1,
after Hinton et al. (2012), "Improving neural networks by preventing
co-adaptation of feature detectors": the vector of weights coming into each
hidden unit is bounded, ``||w||_2 <= c``; after every update a vector that grew
past ``c`` is scaled back onto the ball. It lets dropout nets train with large
learning rates and momentum without the weights blowing up; the paper's MNIST
nets use ``c = 2`` (Appendix B.1), its Appendix A.3 reports ``c`` of 3-4 as typical.

* :func:`max_norm_` applies the constraint once, in place (``torch.renorm``
  semantics: each slice along ``dim`` whose norm exceeds ``max_norm`` is
  scaled to ``max_norm``; slices below the bound are left bit for bit).
* :class:`MaxNorm` applies it after every ``optimizer.step()`` through
  ``Optimizer.register_step_post_hook``.

Which tensors: given a module, the weights of its ``Linear`` and convolution
layers (a unit's incoming weights are a row of a ``Linear`` weight, an output
channel's filter of a ``Conv`` weight: ``dim=0``; ``dim=1`` for ``ConvTranspose``,
whose weight is laid out ``(in, out, ...)``). Given tensors or an optimizer,
every tensor of two or more dimensions. Biases and other 1-D tensors are
never constrained: the paper bounds incoming weight vectors, and renormalising
a bias would clip each scalar on its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

__all__ = ["MaxNorm", "max_norm_"]

Target = Union[nn.Module, Tensor, Iterable[Tensor]]

# Layers whose weight holds incoming weight vectors, and the dim that indexes the units.
_UNIT_DIM: tuple[tuple[type, int], ...] = (
    (nn.Linear, 0),
    (nn.Bilinear, 0),
    (nn.modules.conv._ConvTransposeNd, 1),  # before _ConvNd: it is a subclass
    (nn.modules.conv._ConvNd, 0),
)


def _validate_max_norm(max_norm: float) -> float:
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)):
        raise TypeError(f"max_norm has to be a positive float, but got {max_norm!r}")
    value = float(max_norm)
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"max_norm has to be a positive finite float, but got {max_norm!r}")
    return value


def _validate_norm_type(norm_type: float) -> float:
    if isinstance(norm_type, bool) or not isinstance(norm_type, (int, float)):
        raise TypeError(f"norm_type has to be a positive float, but got {norm_type!r}")
    if not float(norm_type) > 0.0:
        raise ValueError(f"norm_type has to be > 0 (2 is the paper's), but got {norm_type!r}")
    return float(norm_type)


def _validate_dim(dim: Optional[int]) -> Optional[int]:
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
        raise TypeError(f"dim has to be an int or None, but got {dim!r}")
    return dim


def _module_weights(module: nn.Module, dim: Optional[int]) -> list[tuple[str, Tensor, int]]:
    found = []
    for name, layer in module.named_modules():
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, Tensor):
            continue
        for kind, unit_dim in _UNIT_DIM:
            if isinstance(layer, kind):
                found.append((f"{name or type(layer).__name__}.weight", weight,
                              unit_dim if dim is None else dim))
                break
    if not found:
        raise ValueError(
            f"max_norm_ found no Linear or convolution weight in {type(module).__name__}; "
            f"pass the tensors to constrain instead (e.g. [module.weight])"
        )
    return found


def _tensors(target: Target, dim: Optional[int]) -> list[tuple[str, Tensor, int]]:
    if isinstance(target, nn.Module):
        return _module_weights(target, dim)
    tensors = [target] if isinstance(target, Tensor) else list(target)
    for index, tensor in enumerate(tensors):
        if not isinstance(tensor, Tensor):
            raise TypeError(
                f"max_norm_ takes a module, a tensor or an iterable of tensors, but item {index} "
                f"is a {type(tensor).__name__}"
            )
    return [(f"tensor {i}", t, 0 if dim is None else dim) for i, t in enumerate(tensors)
            if t.dim() >= 2]


def _check_dims(found: list[tuple[str, Tensor, int]]) -> None:
    for name, tensor, dim in found:
        if not -tensor.dim() <= dim < tensor.dim():
            raise ValueError(
                f"dim has to be in [{-tensor.dim()}, {tensor.dim() - 1}] for {name} of shape "
                f"{tuple(tensor.shape)}, but got {dim}"
            )


@torch.no_grad()
def max_norm_(
    target: Target, max_norm: float, dim: Optional[int] = None, *, norm_type: float = 2.0
) -> int:
    """Scale every unit's incoming weight vector whose norm exceeds ``max_norm`` back to it.

    In place; returns how many weight tensors were constrained. ``target`` is a
    module (its ``Linear``/``Conv``/``ConvTranspose`` weights, biases skipped), a
    tensor, or an iterable of tensors (e.g. ``model.parameters()``; tensors of
    fewer than two dimensions are skipped). ``dim`` indexes the units; ``None``
    means 0 (1 for ``ConvTranspose`` weights). Slices already inside the bound
    are untouched; a slice above it ends with norm ``max_norm`` up to
    ``torch.renorm``'s 1e-7 guard.

    Srivastava et al. (2014), "Dropout: a simple way to prevent neural networks
    from overfitting", section 5.1. Use it with dropout and a large learning rate.

    Example::

        >>> net = torch.nn.Sequential(torch.nn.Linear(784, 1024), torch.nn.ReLU(),
        ...                           torch.nn.Linear(1024, 10))
        >>> dropkit.max_norm_(net, 2.0)           # 2 weight tensors constrained
        >>> net[0].weight.norm(dim=1).max() <= 2.0
    """
    bound = _validate_max_norm(max_norm)
    norm = _validate_norm_type(norm_type)
    found = _tensors(target, _validate_dim(dim))
    _check_dims(found)
    for _, tensor, unit_dim in found:
        tensor.renorm_(norm, unit_dim, bound)
    return len(found)


class MaxNorm:
    """Keep the max-norm constraint after every ``optimizer.step()``.

    ``MaxNorm(model, c, optimizer=opt)`` constrains ``model``'s Linear/Conv
    weights (see :func:`max_norm_`); ``MaxNorm(opt, c)`` constrains every tensor
    of two or more dimensions that ``opt`` updates. The constraint is applied
    once at construction, so training starts inside the bound, then by a
    ``register_step_post_hook`` hook after each step. :meth:`remove` detaches it.
    The hook holds no state of its own: a resumed run only rebuilds it.

    Srivastava et al. (2014), section 5.1; Hinton et al. (2012).

    Example::

        >>> opt = torch.optim.SGD(net.parameters(), lr=1.0, momentum=0.95)
        >>> constraint = dropkit.MaxNorm(net, 2.0, optimizer=opt)
        >>> loss.backward(); opt.step()           # rows of every weight now have norm <= 2
    """

    def __init__(
        self,
        target: Union[nn.Module, torch.optim.Optimizer],
        max_norm: float,
        dim: Optional[int] = None,
        *,
        optimizer: Optional[torch.optim.Optimizer] = None,
        norm_type: float = 2.0,
    ) -> None:
        self.max_norm = _validate_max_norm(max_norm)
        self.norm_type = _validate_norm_type(norm_type)
        self.dim = _validate_dim(dim)
        if isinstance(target, torch.optim.Optimizer):
            if optimizer is not None and optimizer is not target:
                raise ValueError("MaxNorm got two optimizers: target and optimizer=")
            optimizer = target
            self._target: Target = [p for group in target.param_groups for p in group["params"]]
        elif isinstance(target, nn.Module):
            if optimizer is None:
                raise ValueError(
                    "MaxNorm(module, ...) needs optimizer= (the constraint runs after its "
                    "step); call dropkit.max_norm_(module, ...) to apply it once"
                )
            self._target = target
        else:
            raise TypeError(
                f"MaxNorm takes an nn.Module or a torch.optim.Optimizer, but got "
                f"{type(target).__name__}"
            )
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer has to be a torch.optim.Optimizer, but got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        # Checked once here, so a bad dim fails before training rather than after step 1.
        found = _tensors(self._target, self.dim)
        _check_dims(found)
        self.apply()
        self._handle = optimizer.register_step_post_hook(self._hook)

    def apply(self) -> int:
        """Apply the constraint now; returns how many weight tensors it covers."""
        return max_norm_(self._target, self.max_norm, self.dim, norm_type=self.norm_type)

    def _hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.apply()

    def remove(self) -> None:
        """Stop applying the constraint after each step."""
        self._handle.remove()

    def __repr__(self) -> str:
        dim = "" if self.dim is None else f", dim={self.dim}"
        return f"MaxNorm(max_norm={self.max_norm}{dim}, norm_type={self.norm_type})"
