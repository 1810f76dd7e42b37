"""Which modules of a model count as dropout layers, shared by schedules, conversion and checks.

A dropout layer is a ``torch.nn`` dropout module (``_DropoutNd`` and the alpha
variants; dropkit's standard modules subclass them) or any module defined under
``dropkit.nn`` that carries a float rate ``p``. Matching dropkit's variants by
their package rather than by name keeps this file independent of which variants
exist: a new ``dropkit.nn`` module with a ``p`` is picked up without an edit here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional, Union

from torch import nn

ModuleTypes = Union[type, tuple[type, ...]]

__all__: list[str] = []


def _has_settable_p(module: nn.Module) -> bool:
    # A learned rate (ConcreteDropout) exposes `p` as a read-only property: it is
    # reported, but a schedule or set_p cannot own it.
    attr = getattr(type(module), "p", None)
    if isinstance(attr, property) and attr.fset is None:
        return False
    return True


def _is_dropout_layer(module: nn.Module) -> bool:
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return True
    p = getattr(module, "p", None)
    return (
        type(module).__module__.startswith("dropkit.nn")
        and isinstance(p, float)
        and not isinstance(p, bool)
    )


def _validate_types(types: Optional[ModuleTypes], caller: str) -> Optional[tuple[type, ...]]:
    if types is None:
        return None
    as_tuple = types if isinstance(types, tuple) else (types,)
    bad = [t for t in as_tuple if not (isinstance(t, type) and issubclass(t, nn.Module))]
    if bad or not as_tuple:
        raise TypeError(
            f"{caller}: types has to be an nn.Module subclass or a tuple of them, but got {types!r}"
        )
    return as_tuple


def _dropout_layers(
    model: nn.Module, types: Optional[tuple[type, ...]] = None
) -> Iterator[tuple[str, nn.Module]]:
    """``(qualified name, module)`` for each dropout layer, in registration order, each once."""
    for name, module in model.named_modules():
        if not _is_dropout_layer(module):
            continue
        if types is not None and not isinstance(module, types):
            continue
        yield name, module


def _display_name(name: str) -> str:
    return name if name else "<root>"


def _validate_model(model: object, caller: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{caller} expects an nn.Module, but got {type(model).__name__}")
    return model
