"""Peer implementations for side-by-side tests, loaded without their heavy imports.

``import timm`` imports torchvision, whose PyPI wheel does not load beside the
pinned CPU torch; ``timm/layers/drop.py`` itself needs only torch, so we load
that one file. Install with ``pip install --no-deps timm`` (the ``peers`` extra).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest


def timm_drop() -> ModuleType:
    """timm's ``layers/drop.py``, or skip the calling test when timm is not installed."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("timm is not installed (pip install --no-deps timm)")
    path = Path(next(iter(spec.submodule_search_locations))) / "layers" / "drop.py"
    if not path.exists():
        pytest.skip(f"timm at {path.parent} has no layers/drop.py")
    file_spec = importlib.util.spec_from_file_location("_timm_layers_drop", path)
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def torchvision_ops() -> ModuleType:
    """``torchvision.ops``, or skip with the reason it cannot be imported."""
    try:
        import torchvision.ops as ops
    except Exception as error:  # a wheel built for another torch fails with OSError/RuntimeError
        pytest.skip(f"torchvision cannot be imported here: {type(error).__name__}: {error}")
    return ops
