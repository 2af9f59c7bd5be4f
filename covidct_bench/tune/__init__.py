"""Ablation grids: specs (YAML, validated), Ray Tune + Optuna execution, the results store."""

from covidct_bench.tune.spec import AXES, GridSpec, load_spec, register_axis

__all__ = ["AXES", "GridSpec", "load_spec", "register_axis"]
