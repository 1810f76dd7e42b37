"""Which modules of a model are dropout layers: the one predicate, for every tool.

``mc`` (which layers sample), ``convert``, ``schedule``, ``check`` and the lab
all ask :func:`is_dropout_layer`. A dropout layer is

* a ``torch.nn`` dropout module (``_DropoutNd``, which the alpha variants and
  dropkit's standard modules subclass),
* any module defined in the ``dropkit.nn`` package (DropBlock, Zoneout,
  WeightDrop, ...), or
* a module whose class sets ``dropkit_stochastic = True`` (a user's own).

Matching dropkit's variants by their package rather than by name keeps this
file independent of which variants exist. Whether a layer's rate can be set
(``schedule``, ``set_p``) is a second question, :func:`has_settable_p`.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Optional, Union

from torch import nn

ModuleTypes = Union[type, tuple[type, ...]]

__all__ = [
    "ModuleTypes",
    "is_dropout_layer",
    "has_settable_p",
    "rate",
    "dropout_layers",
    "validate_types",
    "validate_model",
    "display_name",
]


def is_dropout_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a dropout layer (see the module docstring)."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return True
    cls = type(module)
    if getattr(cls, "dropkit_stochastic", False):
        return True
    return cls.__module__ == "dropkit.nn" or cls.__module__.startswith("dropkit.nn.")


def has_settable_p(module: nn.Module) -> bool:
    """Whether ``module`` has a real-valued rate ``p`` that a schedule or ``set_p`` may set.

    A learned rate (ConcreteDropout) is a read-only property: reported, never set.
    Modules without one ``p`` (Zoneout's ``p_hidden``/``p_cell``) are left alone.
    """
    attr = getattr(type(module), "p", None)
    if isinstance(attr, property) and attr.fset is None:
        return False
    p = getattr(module, "p", None)
    return isinstance(p, numbers.Real) and not isinstance(p, bool)


def rate(module: nn.Module) -> Optional[float]:
    """The layer's drop probability ``p`` as a float, or ``None`` when it has no single rate."""
    p = getattr(module, "p", None)
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        return None
    return float(p)


def validate_types(types: Optional[ModuleTypes], caller: str) -> Optional[tuple[type, ...]]:
    if types is None:
        return None
    as_tuple = types if isinstance(types, tuple) else (types,)
    bad = [t for t in as_tuple if not (isinstance(t, type) and issubclass(t, nn.Module))]
    if bad or not as_tuple:
        raise TypeError(
            f"{caller}: types has to be an nn.Module subclass or a tuple of them, but got {types!r}"
        )
    return as_tuple


def dropout_layers(
    model: nn.Module, types: Optional[tuple[type, ...]] = None
) -> Iterator[tuple[str, nn.Module]]:
    """``(qualified name, module)`` for each dropout layer, in registration order, each once."""
    for name, module in model.named_modules():
        if not is_dropout_layer(module):
            continue
        if types is not None and not isinstance(module, types):
            continue
        yield name, module


def display_name(name: str) -> str:
    return name if name else "<root>"


def validate_model(model: object, caller: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{caller} expects an nn.Module, but got {type(model).__name__}")
    return model
