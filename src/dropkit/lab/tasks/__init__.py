"""Task registry: each task is a data set plus a model with dropout where practitioners put it.

Adding a task is one file in this folder that defines a :class:`Task` subclass
and calls :func:`register` on an instance; the registry imports every module
here on first use, so nothing else has to change.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Optional

import torch
from torch import Tensor, nn

import dropkit
from dropkit.lab.errors import LabError

__all__ = [
    "DataStatus",
    "MissingDataError",
    "Task",
    "TaskData",
    "UnknownTaskError",
    "VARIANTS",
    "available_tasks",
    "get_task",
    "make_dropout",
    "register",
    "with_validation",
]

Kind = Literal["classification", "regression", "language_model"]
Placement = Literal["dense", "conv1d", "conv2d"]
#: Metrics where a smaller number is better.
LOWER_IS_BETTER = frozenset({"rmse", "perplexity", "bits_per_char"})


class UnknownTaskError(LabError, ValueError):
    """A task or dropout variant name that is not registered."""


class MissingDataError(LabError, FileNotFoundError):
    """A task's data files are absent; the message says where to put them."""


@dataclass(frozen=True)
class DataStatus:
    """Whether a task's data is present, where it was looked for, and how to get it.

    ``damaged``: the files are there but fail their checks (``location`` quotes why).
    """

    present: bool
    location: str
    hint: str = ""
    damaged: bool = False


@dataclass
class TaskData:
    """Tensors of one task; ``y_scale`` turns a standardised regression target back into units.

    ``x_val``/``y_val`` are held out of the training data (:func:`with_validation`): the
    lab picks each run's reported epoch on them, so the test set never chooses anything.
    ``seed`` is set by tasks whose data differs per run seed (:attr:`Task.data_per_seed`):
    the seed this data was loaded for.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    y_scale: float = 1.0
    notes: list[str] = field(default_factory=list)
    x_val: Optional[Tensor] = None
    y_val: Optional[Tensor] = None
    seed: Optional[int] = None


def with_validation(
    data: TaskData, fraction: float, *, stratify: bool = False, contiguous: bool = False,
    seed: int = 0,
) -> TaskData:
    """``data`` with ``fraction`` of its training examples moved into a validation split.

    The split is fixed (``seed`` 0 for every run), so the runs of one experiment that
    share a seed also share their data and can be compared pairwise. ``stratify`` keeps
    class proportions; ``contiguous`` takes the tail instead (windows of one token stream,
    where neighbours share context, so a random split would leak it).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction has to be in (0, 1), but got {fraction!r}")
    n = len(data.y_train)
    if contiguous:
        cut = n - max(1, round(n * fraction))
        train, val = torch.arange(cut), torch.arange(cut, n)
    else:
        labels = data.y_train if stratify else None
        if labels is not None:
            counts = torch.bincount(labels)
            classes = int((counts > 0).sum())
            # Stratifying needs a held-out example per class and two of every class; tiny
            # sets (test fixtures) fall back to a plain random split.
            if math.ceil(n * fraction) < classes or int(counts[counts > 0].min()) < 2:
                labels = None
        train, val = split_indices(n, fraction, seed, stratify=labels)
    note = (
        f"validation: {len(val)} of the {n} training examples held out "
        f"({'the last ' if contiguous else ''}{fraction:.0%}, fixed split); each run's reported "
        f"epoch is the one with the best validation metric; {len(train)} examples train"
    )
    return TaskData(
        data.x_train[train], data.y_train[train], data.x_test, data.y_test,
        y_scale=data.y_scale, notes=[*data.notes, note],
        x_val=data.x_train[val], y_val=data.y_train[val], seed=data.seed,
    )


def _standard(p: float, placement: Placement) -> nn.Module:
    # Channel dropout after convolutions: neighbouring activations are so correlated
    # that element-wise masks barely regularise (Tompson et al., 2015).
    if placement == "conv2d":
        return dropkit.Dropout2d(p)
    if placement == "conv1d":
        return dropkit.Dropout1d(p)
    return dropkit.Dropout(p)


def _elementwise(p: float, placement: Placement) -> nn.Module:
    return dropkit.Dropout(p)


def _gaussian(p: float, placement: Placement) -> nn.Module:
    # Multiplicative N(1, p/(1-p)) noise: the same mean and variance as Bernoulli dropout
    # at rate p (Srivastava et al., 2014, s.10), so rates compare across the two variants.
    return dropkit.GaussianDropout(p)


def _dropblock(p: float, placement: Placement) -> nn.Module:
    # Contiguous 3x3 regions on 2-D feature maps (Ghiasi et al., 2018): the lab's maps
    # are 8x8 to 40x100, too small for the paper's block_size=7. Dense layers keep
    # element-wise dropout, 1-D maps channel dropout, as in the paper's ResNets.
    if placement == "conv2d":
        return dropkit.DropBlock2d(p, block_size=3)
    return _standard(p, placement)


#: Dropout variant name -> factory(p, placement). Variants that land in
#: ``dropkit.nn`` later add one entry here.
VARIANTS: dict[str, Callable[[float, Placement], nn.Module]] = {
    "standard": _standard,
    "elementwise": _elementwise,
    "gaussian": _gaussian,
    "dropblock": _dropblock,
}


def make_dropout(variant: str, p: float, placement: Placement) -> nn.Module:
    """The dropout layer ``variant`` puts at ``placement`` (``dense``, ``conv1d``, ``conv2d``)."""
    if variant not in VARIANTS:
        raise UnknownTaskError(
            f"unknown dropout variant {variant!r}; expected one of {sorted(VARIANTS)}"
        )
    return VARIANTS[variant](dropkit.functional.validate_p(p), placement)


class Task:
    """One lab task. Subclasses set the class attributes and implement ``load`` and ``build_model``.

    Models expose ``model.head``: the final ``nn.Linear``. Its input is the
    hidden representation the lab ablates and probes for co-adaptation.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    kind: ClassVar[Kind] = "classification"
    #: Name of the reported metric: ``accuracy`` (higher is better) or ``rmse`` (lower).
    metric: ClassVar[str] = "accuracy"
    #: Defaults of the experiment grid and of training; a config file or flags override them.
    defaults: ClassVar[dict] = {}
    #: Whether the report measures MC-dropout uncertainty (selective prediction / intervals).
    uncertainty: ClassVar[bool] = False
    #: Examples per forward pass when evaluating; language models lower it, because their
    #: outputs are (batch, time, vocabulary) and a whole split of them does not fit in memory.
    eval_batch_size: ClassVar[int] = 2048
    #: Gradient-norm clip per step (recurrent models: exploding gradients), or None.
    clip_grad_norm: ClassVar[Optional[float]] = None
    #: Share of the training examples held out as the validation split.
    validation_fraction: ClassVar[float] = 0.2
    #: Whether ``load(data_dir, seed)`` returns different data per run seed (cross-validation:
    #: seed s is fold s). Runners then load once per seed instead of once per experiment.
    data_per_seed: ClassVar[bool] = False
    #: An application claim of the explainer that this task's test set can judge:
    #: ``(claim, what the test set is)``, or ``(claim, None)`` when it cannot (the reason
    #: in :attr:`application_not_measured`).
    application_claim: ClassVar[Optional[tuple[str, Optional[str]]]] = None
    application_not_measured: ClassVar[str] = ""

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER

    def data_status(self, data_dir: Optional[Path]) -> DataStatus:
        """Bundled or generated data is always present; file-backed tasks override this."""
        return DataStatus(True, "bundled with its Python package")

    def load(self, data_dir: Optional[Path], seed: int = 0) -> TaskData:
        raise NotImplementedError

    def build_model(self, p: float, variant: str = "standard") -> nn.Module:
        raise NotImplementedError

    def dropout_layout(self, variant: str) -> list[tuple[str, str]]:
        """``(module path, layer)`` for every dropout layer ``variant`` puts in this task's model.

        Built at p=0.5 from :meth:`build_model`; tasks whose model needs loaded data
        (vocabulary, feature count) override this or return ``[]`` before ``load``.
        """
        from dropkit.lab.measure import dropout_layers

        try:
            model = self.build_model(0.5, variant)
        except RuntimeError:  # the model's size comes from data not loaded yet
            return []
        wanted = {id(layer) for layer in dropout_layers(model)}
        return [(name, f"{type(module).__name__}({module.extra_repr()})")
                for name, module in model.named_modules() if id(module) in wanted]

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        if self.kind == "classification":
            return nn.functional.cross_entropy(output, target)
        return nn.functional.mse_loss(output.squeeze(-1), target)

    def score(self, output: Tensor, target: Tensor, y_scale: float = 1.0) -> float:
        """The task metric of a batch of outputs: accuracy, or RMSE in the target's units."""
        if self.kind == "classification":
            return (output.argmax(-1) == target).float().mean().item()
        mse = nn.functional.mse_loss(output.squeeze(-1), target).item()
        return mse**0.5 * y_scale


_REGISTRY: dict[str, Task] = {}
_DISCOVERED = False


def register(task: Task) -> Task:
    """Add ``task`` to the registry under ``task.name``; returns it so modules can keep a handle."""
    if task.name in _REGISTRY and type(_REGISTRY[task.name]) is not type(task):
        raise ValueError(f"task name {task.name!r} is registered twice")
    _REGISTRY[task.name] = task
    return task


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    _DISCOVERED = True


def available_tasks() -> dict[str, Task]:
    """Every registered task by name, sorted."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def get_task(name: str) -> Task:
    """The task called ``name``; the error lists the known names."""
    tasks = available_tasks()
    if name not in tasks:
        raise UnknownTaskError(f"unknown task {name!r}; expected one of {sorted(tasks)}")
    return tasks[name]


def split_indices(n: int, test_fraction: float, seed: int, stratify: Optional[Tensor] = None):
    """Train/test indices of a fixed split, stratified by ``stratify`` when given."""
    from sklearn.model_selection import train_test_split

    indices = torch.arange(n).numpy()
    labels = None if stratify is None else stratify.numpy()
    train, test = train_test_split(
        indices, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return torch.as_tensor(train), torch.as_tensor(test)
