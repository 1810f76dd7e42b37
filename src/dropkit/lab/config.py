"""Experiment configs: task defaults, then a TOML file, then command-line flags; validated once.

TOML layout (every key optional except ``task`` when no task is named on the command line)::

    [experiment]
    name = "digits-sweep"
    task = "digits"
    variants = ["standard"]
    rates = [0.0, 0.2, 0.5]
    seeds = [0, 1]

    [train]
    epochs = 40
    batch_size = 32
    lr = 0.001
    weight_decay = 0.0
    threads = 1

    [measure]
    mc_samples = 10

    [data]
    dir = "../shared/data"
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

from dropkit.functional import validate_p
from dropkit.lab.tasks import VARIANTS, UnknownTaskError, get_task

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["ConfigError", "ExperimentConfig", "RunConfig", "build_config", "load_toml"]

_SECTIONS: dict[str, tuple[str, ...]] = {
    "experiment": ("name", "task", "variants", "rates", "seeds"),
    "train": ("epochs", "batch_size", "lr", "weight_decay", "threads"),
    "measure": ("mc_samples",),
    "data": ("dir",),
}


class ConfigError(ValueError):
    """A bad experiment config; the message names the value and what was expected."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's result; stored verbatim with it.

    One run, however it is driven: a grid point of ``dropkit lab run``, the same
    trained data-parallel on ``ddp`` processes (``--ddp``), or trial ``trial`` of the
    Optuna study ``study`` (``dropkit lab sweep``). The optional fields are left out
    of :meth:`to_dict` and :attr:`key` when unset, so stores written before they
    existed keep their keys and configs.
    """

    task: str
    variant: str
    p: float
    seed: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    ddp: Optional[int] = None
    study: Optional[str] = None
    trial: Optional[int] = None

    @property
    def key(self) -> str:
        """The run's name in its experiment, the one format for every driver:
        ``[trial=NNNN/]<variant>/p=<p>/seed=<seed>[/ddp=<N>]``."""
        key = f"{self.variant}/p={self.p:g}/seed={self.seed}"
        if self.trial is not None:
            key = f"trial={self.trial:04d}/{key}"
        if self.ddp is not None:
            key = f"{key}/ddp={self.ddp}"
        return key

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items()
                if v is not None or k not in ("ddp", "study", "trial")}

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment: a grid of variants x rates x seeds on one task."""

    name: str
    task: str
    variants: tuple[str, ...]
    rates: tuple[float, ...]
    seeds: tuple[int, ...]
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    threads: int
    mc_samples: int
    data_dir: Optional[str]

    def runs(self, ddp: Optional[int] = None) -> list[RunConfig]:
        """One :class:`RunConfig` per grid point, in a stable order (``ddp``: its world size)."""
        return [
            RunConfig(
                task=self.task, variant=variant, p=p, seed=seed, epochs=self.epochs,
                batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                ddp=ddp,
            )
            for variant in self.variants
            for p in self.rates
            for seed in self.seeds
        ]

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("variants", "rates", "seeds"):
            data[key] = list(data[key])
        return data


def load_toml(path: Path) -> dict[str, Any]:
    """Flatten a TOML experiment file into ``{key: value}``; unknown sections/keys are errors."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {str(path)!r}: {error.strerror}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None
    flat: dict[str, Any] = {}
    for section, table in document.items():
        if section not in _SECTIONS:
            raise ConfigError(
                f"config file {str(path)!r}: unknown section [{section}]; "
                f"expected one of {sorted(_SECTIONS)}"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"config file {str(path)!r}: {section!r} must be a [table]")
        for key, value in table.items():
            if key not in _SECTIONS[section]:
                raise ConfigError(
                    f"config file {str(path)!r}: unknown key {key!r} in [{section}]; "
                    f"expected one of {list(_SECTIONS[section])}"
                )
            flat["data_dir" if (section, key) == ("data", "dir") else key] = value
    return flat


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} has to be an integer >= {minimum}, but got {value!r}")
    return value


def _positive_float(name: str, value: Any, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} has to be a finite number {bound}, but got {value!r}")
    return value


def _list(name: str, value: Any) -> list:
    if isinstance(value, (list, tuple)) and value:
        return list(value)
    raise ConfigError(f"{name} has to be a non-empty list, but got {value!r}")


def build_config(
    task: Optional[str] = None,
    config_file: Optional[Path] = None,
    **overrides: Any,
) -> ExperimentConfig:
    """Merge task defaults < TOML file < non-``None`` overrides, and validate everything.

    Checks the task exists, rates are probabilities, counts are positive, the
    data directory exists and the task's data is present in it. Nothing is
    written; errors are :class:`ConfigError` with the offending value.
    """
    values: dict[str, Any] = load_toml(config_file) if config_file is not None else {}
    if task is not None:
        values["task"] = task
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "task" not in values:
        raise ConfigError(
            "no task given: name one (see `dropkit lab tasks`) or set it in [experiment]"
        )
    try:
        task_obj = get_task(values["task"])
    except UnknownTaskError as error:
        raise ConfigError(str(error)) from None
    merged = {"name": task_obj.name, "variants": ["standard"], "threads": 1, "mc_samples": 10}
    merged.update(task_obj.defaults)
    merged.update(values)
    merged.setdefault("data_dir", os.environ.get("DROPKIT_DATA"))

    rates = []
    for rate in _list("rates", merged["rates"]):
        try:
            rates.append(validate_p(rate, "dropout rate"))
        except (TypeError, ValueError) as error:
            raise ConfigError(str(error)) from None
    if any(rate == 1.0 for rate in rates):
        raise ConfigError("dropout rate 1.0 drops every unit, so nothing can train; use < 1")
    seeds = [_int("seed", seed, 0) for seed in _list("seeds", merged["seeds"])]
    variants = _list("variants", merged["variants"])
    for variant in variants:
        if variant not in VARIANTS:
            raise ConfigError(
                f"unknown dropout variant {variant!r}; expected one of {sorted(VARIANTS)}"
            )
    name = merged["name"]
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"experiment name has to be a non-empty string, but got {name!r}")

    data_dir = merged["data_dir"]
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise ConfigError(f"data directory {str(data_dir)!r} does not exist or is not a folder")
        data_dir = str(Path(data_dir).resolve())
    status = task_obj.data_status(None if data_dir is None else Path(data_dir))
    if not status.present:
        raise ConfigError(
            f"data for task {task_obj.name!r} is missing at {status.location}. {status.hint}"
        )
    return ExperimentConfig(
        name=name,
        task=task_obj.name,
        variants=tuple(dict.fromkeys(variants)),
        rates=tuple(dict.fromkeys(rates)),
        seeds=tuple(dict.fromkeys(seeds)),
        epochs=_int("epochs", merged["epochs"], 1),
        batch_size=_int("batch_size", merged["batch_size"], 1),
        lr=_positive_float("lr", merged["lr"]),
        weight_decay=_positive_float("weight_decay", merged["weight_decay"], allow_zero=True),
        threads=_int("threads", merged["threads"], 1),
        mc_samples=_int("mc_samples", merged["mc_samples"], 1),
        data_dir=data_dir,
    )
