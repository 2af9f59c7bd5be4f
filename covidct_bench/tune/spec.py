"""Grid specs: an ablation table as YAML data (``ablations/*.yaml``), validated with pydantic.

A spec names a task, fixed ``TrainConfig`` settings, axes whose values are crossed into cells, seeds,
an optional Optuna search space (``trials`` per cell; 0 = the paper defaults, no search), the
validation metric to optimise, resources per trial and presets that scale image size and epochs.
Each axis is one registry entry that turns a value into ``TrainConfig`` overrides, so adding an axis
value is YAML and adding an axis is one ``@register_axis`` function. Every cell is checked by
building its ``TrainConfig`` when the spec loads: a bad value fails before anything runs, with a
one-line error naming the file and the key path.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from covidct_bench.errors import BenchError, first_invalid, reason
from covidct_bench.registry import Registry
from covidct_bench.train.config import TrainConfig

AXES: Registry[Callable[[Any], dict]] = Registry("axis")


def register_axis(name: str):
    return AXES.register(name)


@register_axis("backbone")
def _backbone(value: str) -> dict:
    return {"backbone": value}


@register_axis("init")
def _init(value: str) -> dict:
    """random | imagenet | imagenet+cssl (ImageNet, then MoCo on the training images; the grid
    runs the CSSL pretraining once and points the cell at it)."""
    if value not in ("random", "imagenet", "imagenet+cssl", "random+cssl"):
        raise ValueError(f"init must be random, imagenet, imagenet+cssl or random+cssl, not {value!r}")
    return {"init": value.split("+")[0], "cssl": value.endswith("+cssl")}


@register_axis("masks")
def _masks(value: str) -> dict:
    """none | lung (U-Net lung mask as an input channel) | lesion (multi-task lesion head) | both."""
    table = {"none": {}, "lung": {"mask_mode": "channel"}, "lesion": {"task": "multitask"},
             "both": {"mask_mode": "channel", "task": "multitask"}}
    if value not in table:
        raise ValueError(f"masks must be one of {', '.join(table)}, not {value!r}")
    return table[value]


_POSITIVE = re.compile(r"^(covid-ct|covid-seg|combination|covid-ct-\d+)$")


@register_axis("positive_data")
def _positive(value: str) -> dict:
    """covid-ct (official training split) | covid-seg (MedSeg slices as positives) | covid-ct-N (a
    seeded subset of N COVID-CT positives) | combination (both positive sets)."""
    if not _POSITIVE.match(str(value)):
        raise ValueError(f"positive_data must be covid-ct, covid-seg, covid-ct-N or combination, not {value!r}")
    return {"positive_data": value}


@register_axis("lr")
def _lr(value: float) -> dict:
    return {"lr": float(value)}


class SearchParam(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["loguniform", "uniform", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> "SearchParam":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs choices")
        elif self.low is None or self.high is None or self.low >= self.high:
            raise ValueError(f"{self.type} needs low < high")
        return self


class Search(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trials: int = Field(0, ge=0, description="Optuna trials per cell on validation (0: paper defaults)")
    space: dict[str, SearchParam] = {}

    @field_validator("space")
    @classmethod
    def _known(cls, v: dict) -> dict:
        for key in v:
            if key not in TrainConfig.model_fields:
                raise ValueError(f"{key!r} is not a TrainConfig setting")
        return v


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpus: float = Field(1, gt=0)
    gpus: float = Field(0, ge=0, description="per Train worker; fractional shares a GPU")
    workers: int = Field(1, ge=1)


class GridSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    task: Literal["classify", "multitask"] = "classify"
    fixed: dict[str, Any] = {}
    axes: dict[str, list[Any]] = {}
    seeds: list[int] = Field([0], min_length=1)
    search: Search = Search()
    metric: str = "auc"
    mode: Literal["max", "min"] = "max"
    resources: Resources = Resources()
    presets: dict[str, dict[str, Any]] = {}
    extra_test: list[str] = []
    reference: str | None = None

    @field_validator("axes")
    @classmethod
    def _axes(cls, v: dict) -> dict:
        for axis, values in v.items():
            if axis not in AXES:
                raise ValueError(f"unknown axis {axis!r} (known: {', '.join(AXES.names())})")
            if not values:
                raise ValueError(f"axis {axis!r} has no values")
            for value in values:
                AXES.get(axis)(value)
        return v

    def cells(self) -> list[dict[str, Any]]:
        """Axis values of every cell, in a stable order (the cartesian product, first axis slowest)."""
        names = list(self.axes)
        return [dict(zip(names, combo)) for combo in itertools.product(*(self.axes[n] for n in names))] or [{}]

    def cell_settings(self, cell: dict[str, Any], preset: str | None = None) -> dict[str, Any]:
        """TrainConfig fields of a cell: task, fixed, preset, then the axes' overrides (which win)."""
        settings: dict[str, Any] = {"task": self.task, **self.fixed}
        if preset is not None:
            if preset not in self.presets:
                raise BenchError(f"--preset: {self.name} has no preset {preset!r} (has: {', '.join(self.presets) or 'none'})")
            settings.update(self.presets[preset])
        for axis, value in cell.items():
            settings.update(AXES.get(axis)(value))
        return settings


GRID_ONLY = ("positive_data", "cssl")  # settings the grid resolves itself before building a TrainConfig


def train_config(settings: dict[str, Any], seed: int) -> TrainConfig:
    return TrainConfig(**{k: v for k, v in settings.items() if k not in GRID_ONLY}, seed=seed)


def config_hash(settings: dict[str, Any], seed: int) -> str:
    """Identity of a (cell, seed) run: a finished result with this hash is not run again."""
    blob = json.dumps({"settings": settings, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_spec(path: str | Path, preset: str | None = None) -> GridSpec:
    """Read and validate a spec; every cell's TrainConfig is built once so bad values fail here."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise BenchError(f"{path}: cannot read grid spec ({reason(e)})") from None
    if not isinstance(data, dict):
        raise BenchError(f"{path}: a grid spec is a mapping of keys to values")
    try:
        spec = GridSpec(**data)
    except ValidationError as e:
        key, msg = first_invalid(e)
        raise BenchError(f"{path}: {key or 'spec'}: {msg.removeprefix('Value error, ')}") from None
    presets = [preset] if preset is not None else [None, *spec.presets]
    for p in presets:
        for cell in spec.cells():
            settings = spec.cell_settings(cell, p)
            try:
                train_config(settings, spec.seeds[0])
            except ValidationError as e:
                key, msg = first_invalid(e)
                where = "fixed" if key.split(".")[0] in spec.fixed else (f"presets.{p}" if p else "axes")
                raise BenchError(f"{path}: {where}.{key}: {msg} (cell {cell or 'default'})") from None
    return spec
