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
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from covidct_bench.data.variants import VARIANT
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


@register_axis("positive_data")
def _positive(value: str) -> dict:
    """covid-ct (official training split) | covid-seg (MedSeg slices as positives) | covid-ct-N (a
    seeded subset of N COVID-CT positives; covid-ct-matched: as many as covid-seg has) | combination
    (both positive sets). See ``data.variants``."""
    if not VARIANT.match(str(value)):
        raise ValueError(f"positive_data must be covid-ct, covid-seg, covid-ct-N, covid-ct-matched or combination, not {value!r}")
    return {"positive_data": value}


@register_axis("view")
def _view(value: str) -> dict:
    """The shortcut audit: full image | no_lungs (lungs blacked out: what is left is background,
    body and source artefacts) | lungs_only (everything but the lungs blacked out)."""
    table = {"full": {}, "no_lungs": {"mask_mode": "exclude"}, "lungs_only": {"mask_mode": "multiply"}}
    if value not in table:
        raise ValueError(f"view must be one of {', '.join(table)}, not {value!r}")
    return table[value]


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
    presets: dict[str, dict[str, Any]] = Field({}, description="name -> TrainConfig overrides (+ 'pretrain': CSSL overrides)")
    exclude: list[dict[str, Any]] = Field([], description="cells to leave out: each entry matches cells by axis values")
    seg_dataset: str = Field("medseg", description="positives with lesion masks for covid-seg / combination")
    data_seed: int = Field(0, description="seed of the covid-ct-N subsets and of CSSL pretraining")
    pretrain: dict[str, Any] = Field({}, description="TrainConfig overrides of the CSSL pretraining (init *+cssl)")
    extra_test: list[str] = Field([], description="datasets scored as extra test sets (all their images, minus training ones)")
    max_failures: int = Field(1, ge=0, description="restarts of a trial whose worker or process died (from its last checkpoint)")
    reference: str | None = Field(None, description="table id in ablations/reference/paper.yaml")

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

    @model_validator(mode="after")
    def _checks(self) -> "GridSpec":
        if self.search.trials and not self.search.space:
            raise ValueError("search: trials > 0 needs a space")
        for i, entry in enumerate(self.exclude):
            if bad := [k for k in entry if k not in self.axes]:
                raise ValueError(f"exclude[{i}]: {bad[0]!r} is not an axis of this grid")
        return self

    def cells(self) -> list[dict[str, Any]]:
        """Axis values of every cell, in a stable order (the cartesian product, first axis slowest),
        without the excluded ones."""
        names = list(self.axes)
        cells = [dict(zip(names, combo)) for combo in itertools.product(*(self.axes[n] for n in names))] or [{}]
        return [c for c in cells if not any(all(c.get(k) == v for k, v in e.items()) for e in self.exclude)]

    def cell_settings(self, cell: dict[str, Any], preset: str | None = None) -> dict[str, Any]:
        """TrainConfig fields of a cell: task, fixed, preset, then the axes' overrides (which win)."""
        settings: dict[str, Any] = {"task": self.task, **self.fixed}
        settings.update({k: v for k, v in self.preset(preset).items() if k != "pretrain"})
        for axis, value in cell.items():
            settings.update(AXES.get(axis)(value))
        return settings


    def preset(self, preset: str | None) -> dict[str, Any]:
        if preset is None:
            return {}
        if preset not in self.presets:
            raise BenchError(f"--preset: {self.name} has no preset {preset!r} (has: {', '.join(self.presets) or 'none'})")
        return self.presets[preset]

    def pretrain_settings(self, settings: dict[str, Any], preset: str | None = None) -> dict[str, Any]:
        """Settings of the CSSL pretraining a ``*+cssl`` cell needs: its data, backbone and init, at its
        image size and epochs, then ``pretrain`` and the preset's ``pretrain`` overrides."""
        keep = ("dataset", "root", "lung_masks", "positive_data", "backbone", "init", "weights", "image_size", "epochs")
        out = {"task": "cssl", **{k: settings[k] for k in keep if k in settings}, **self.pretrain,
               **self.preset(preset).get("pretrain", {})}
        return out


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
    if not spec.cells():
        raise BenchError(f"{path}: exclude leaves no cell to run")
    for p in presets:
        for cell in spec.cells():
            settings = spec.cell_settings(cell, p)
            checks = [(settings, "fixed", spec.fixed)]
            if settings.get("cssl"):
                checks.append((spec.pretrain_settings(settings, p), "pretrain", spec.pretrain))
            for s, name, block in checks:
                try:
                    train_config(s, spec.seeds[0])
                except ValidationError as e:
                    key, msg = first_invalid(e)
                    where = name if key.split(".")[0] in block else (f"presets.{p}" if p else "axes")
                    raise BenchError(f"{path}: {where}.{key}: {msg} (cell {cell_id(cell)})") from None
    return spec


def cell_id(cell: dict[str, Any]) -> str:
    """A cell's readable identity, e.g. ``backbone=resnet18,masks=lung`` (``default`` for a grid without axes)."""
    return ",".join(f"{k}={v}" for k, v in cell.items()) or "default"
