"""Swap a model's dropout modules for dropkit's, and set dropout rates in bulk.

``convert`` replaces ``torch.nn`` dropout modules (and, where installed, timm's
``DropPath``/``DropBlock2d`` and torchvision's ``StochasticDepth``/``DropBlock2d``/
``DropBlock3d``) by their dropkit equivalents with the same rate, so an existing
model gets dropkit's reproducible Philox masks without editing its code. Peers are
recognised by their class name and package, so neither timm nor torchvision has to
be importable here. A peer whose dropkit counterpart does not exist in this
version, or whose options have no faithful dropkit equivalent, is left in place
and listed in :attr:`Conversion.skipped` with the reason.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from dropkit._layers import (
    ModuleTypes,
    display_name,
    dropout_layers,
    has_settable_p,
    validate_model,
    validate_types,
)
from dropkit.functional import validate_p

__all__ = ["Change", "Conversion", "Skipped", "convert", "set_p"]


@dataclass(frozen=True)
class Change:
    """One module replaced by :func:`convert`: its qualified name and both class paths."""

    name: str
    before: str
    after: str


@dataclass(frozen=True)
class Skipped:
    """A module :func:`convert` recognised but left in place, and why."""

    name: str
    module_type: str
    reason: str


@dataclass
class Conversion:
    """What :func:`convert` returns: the converted model and a report of what changed."""

    model: nn.Module
    changed: list[Change] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"converted {len(self.changed)} module(s), skipped {len(self.skipped)}"]
        lines += [f"  {c.name}: {c.before} -> {c.after}" for c in self.changed]
        lines += [f"  skipped {s.name} ({s.module_type}): {s.reason}" for s in self.skipped]
        return "\n".join(lines)


class _Unsupported(Exception):
    """Raised by a builder when a module's options have no faithful dropkit equivalent."""


def _class_path(module_or_type: object) -> str:
    cls = module_or_type if isinstance(module_or_type, type) else type(module_or_type)
    return f"{cls.__module__}.{cls.__qualname__}"


def _dropkit_class(name: str) -> Optional[type]:
    # Looked up at conversion time: the variant modules (DropPath, DropBlock2d, ...)
    # may be absent from this dropkit version, and then the mapping is skipped.
    import dropkit.nn

    return getattr(dropkit.nn, name, None)


def _rate(value: object, what: str) -> float:
    return validate_p(float(value) if isinstance(value, int) else value, what)


def _torch_standard(module: nn.Module, target: type) -> nn.Module:
    return target(_rate(module.p, "p"), module.inplace)


def _timm_drop_path(module: nn.Module, target: type) -> nn.Module:
    return target(
        _rate(module.drop_prob, "drop_prob"),
        scale_by_keep=bool(getattr(module, "scale_by_keep", True)),
    )


def _timm_drop_block(module: nn.Module, target: type) -> nn.Module:
    if getattr(module, "with_noise", False):
        raise _Unsupported("with_noise=True fills dropped blocks with noise; dropkit zeroes them")
    if float(getattr(module, "gamma_scale", 1.0)) != 1.0:
        raise _Unsupported(f"gamma_scale={module.gamma_scale} rescales the seed rate")
    # timm's default couple_channels=True shares one mask across channels (the
    # paper's form): dropkit's share_channels. Dropping it would silently turn the
    # converted layer into per-channel DropBlock.
    return target(
        _rate(module.drop_prob, "drop_prob"),
        int(module.block_size),
        bool(getattr(module, "inplace", False)),
        share_channels=bool(getattr(module, "couple_channels", True)),
        scale_by_keep=bool(getattr(module, "scale_by_keep", True)),
        batchwise=bool(getattr(module, "batchwise", False)),
        # timm seeds blocks anywhere and centres them (a higher realised rate than
        # the paper's placement) and clips big blocks: keep its behaviour.
        clip_blocks=True,
    )


def _torchvision_stochastic_depth(module: nn.Module, target: type) -> nn.Module:
    if module.mode not in ("row", "batch"):
        raise _Unsupported(f"mode={module.mode!r} is neither 'row' nor 'batch'")
    # mode="batch" drops the branch for the whole batch: DropPath(batchwise=True).
    return target(_rate(module.p, "p"), scale_by_keep=True, batchwise=module.mode == "batch")


def _torchvision_drop_block(module: nn.Module, target: type) -> nn.Module:
    # torchvision draws one mask per channel (share_channels=False, dropkit's default).
    return target(
        _rate(module.p, "p"), int(module.block_size), bool(getattr(module, "inplace", False))
    )


@dataclass(frozen=True)
class _Rule:
    package: str  # the source class's module starts with this
    class_name: str
    target: str  # class name in dropkit.nn
    build: Callable[[nn.Module, type], nn.Module]


# torch.nn modules are matched by exact type, so dropkit's own subclasses and a
# user's customised subclass are never replaced.
_TORCH_RULES: dict[type, str] = {
    nn.Dropout: "Dropout",
    nn.Dropout1d: "Dropout1d",
    nn.Dropout2d: "Dropout2d",
    nn.Dropout3d: "Dropout3d",
    nn.AlphaDropout: "AlphaDropout",
    nn.FeatureAlphaDropout: "FeatureAlphaDropout",
}

_PEER_RULES: tuple[_Rule, ...] = (
    _Rule("timm.", "DropPath", "DropPath", _timm_drop_path),
    _Rule("timm.", "DropBlock2d", "DropBlock2d", _timm_drop_block),
    _Rule("torchvision.", "StochasticDepth", "DropPath", _torchvision_stochastic_depth),
    _Rule("torchvision.", "DropBlock2d", "DropBlock2d", _torchvision_drop_block),
    _Rule("torchvision.", "DropBlock3d", "DropBlock3d", _torchvision_drop_block),
)


def _match(module: nn.Module) -> Optional[tuple[str, Callable[[nn.Module, type], nn.Module]]]:
    target = _TORCH_RULES.get(type(module))
    if target is not None:
        return target, _torch_standard
    cls = type(module)
    for rule in _PEER_RULES:
        if cls.__name__ == rule.class_name and cls.__module__.startswith(rule.package):
            return rule.target, rule.build
    return None


def _replacement(module: nn.Module) -> tuple[Optional[nn.Module], Optional[str]]:
    """``(new module, None)``, ``(None, reason)`` when recognised but not convertible,
    or ``(None, None)`` when the module is not a convertible dropout layer."""
    matched = _match(module)
    if matched is None:
        return None, None
    target_name, build = matched
    target = _dropkit_class(target_name)
    if target is None:
        return None, f"dropkit.nn.{target_name} is not available in this dropkit version"
    try:
        new = build(module, target)
    except _Unsupported as unsupported:
        return None, str(unsupported)
    new.train(module.training)
    # Hooks a user registered on the old module keep firing on its replacement.
    new._forward_hooks = module._forward_hooks
    new._forward_pre_hooks = module._forward_pre_hooks
    return new, None


def convert(model: nn.Module, *, inplace: bool = False) -> Conversion:
    """Replace ``torch.nn`` (and timm/torchvision) dropout modules by dropkit's.

    Mapping (rate, ``inplace`` and training flag preserved):

    ======================================================  ==========================
    source                                                  dropkit
    ======================================================  ==========================
    ``nn.Dropout``/``Dropout1d``/``2d``/``3d``               same name
    ``nn.AlphaDropout``/``nn.FeatureAlphaDropout``           same name
    timm ``DropPath(drop_prob, scale_by_keep)``              ``DropPath``
    timm ``DropBlock2d`` (no noise, ``gamma_scale=1``)       ``DropBlock2d(clip_blocks=True,
                                                            share_channels=couple_channels)``
    torchvision ``StochasticDepth(p, mode="row")``           ``DropPath``
    torchvision ``StochasticDepth(p, mode="batch")``         ``DropPath(batchwise=True)``
    torchvision ``DropBlock2d``/``DropBlock3d``              same name
    ======================================================  ==========================

    All of these are the identity in eval mode, so a converted model's eval
    outputs are unchanged; training masks come from dropkit's Philox stream
    (reproducible under ``torch.manual_seed``) rather than torch's RNG.
    Modules shared between several parents are converted once and stay shared.

    Args:
        model: any module; it may itself be a dropout layer.
        inplace: modify ``model`` (``True``) or convert a deep copy (``False``).

    Returns:
        A :class:`Conversion`: ``.model`` (the converted model), ``.changed`` and
        ``.skipped`` (recognised but left in place, with the reason).

    Example::

        >>> result = dropkit.convert(torchvision_style_model)
        >>> model = result.model
        >>> print(result)   # converted 3 module(s), skipped 0 ...
    """
    model = validate_model(model, "convert")
    if not isinstance(inplace, bool):
        raise TypeError(f"convert: inplace has to be a bool, but got {inplace!r}")
    if not inplace:
        model = copy.deepcopy(model)
    report = Conversion(model)
    memo: dict[int, Optional[nn.Module]] = {}

    def visit(module: nn.Module, name: str) -> Optional[nn.Module]:
        if id(module) in memo:
            return memo[id(module)]
        new, reason = _replacement(module)
        memo[id(module)] = new
        if new is not None:
            report.changed.append(
                Change(display_name(name), _class_path(module), _class_path(new))
            )
        elif reason is not None:
            report.skipped.append(Skipped(display_name(name), _class_path(module), reason))
        return new

    root = visit(model, "")
    if root is not None:
        report.model = root
        return report
    parents = list(model.named_modules())
    for parent_name, parent in parents:
        for child_name, child in list(parent._modules.items()):
            if child is None:
                continue
            qualified = f"{parent_name}.{child_name}" if parent_name else child_name
            new = visit(child, qualified)
            if new is not None:
                parent._modules[child_name] = new
    return report


def set_p(model: nn.Module, p: float, *, types: Optional[ModuleTypes] = None) -> list[str]:
    """Set the rate ``p`` of every dropout layer in ``model`` (or of those of ``types``).

    Dropout layers are ``torch.nn`` dropout modules and dropkit's (``dropkit.nn``
    modules with a float ``p``). Layers whose ``p`` is learned (a read-only
    property, as in ``ConcreteDropout``) are left alone. Peers' modules (timm,
    torchvision) are not dropout layers here; :func:`convert` them first.

    Args:
        model: the model to edit in place.
        p: the new drop probability, in ``[0, 1]``.
        types: a module class or tuple of classes; only instances are changed,
            e.g. ``types=nn.Dropout2d`` for the convolutional layers only.

    Returns:
        The qualified names of the layers that were set.

    Example::

        >>> dropkit.set_p(model, 0.1)                       # every dropout layer
        >>> dropkit.set_p(model, 0.2, types=nn.Dropout2d)   # only channel dropout
    """
    model = validate_model(model, "set_p")
    p = validate_p(p)
    wanted = validate_types(types, "set_p")
    changed = []
    for name, module in dropout_layers(model, wanted):
        if has_settable_p(module):
            module.p = p
            changed.append(display_name(name))
    return changed
