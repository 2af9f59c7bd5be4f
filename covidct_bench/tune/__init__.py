"""Ablation grids: specs (YAML, validated), Ray Tune + Optuna execution, the results store.

The spec names are loaded on first use: the results store and the reference numbers are read by the
report, which must not pay for importing torch (the spec validates cells through TrainConfig).
"""

__all__ = ["AXES", "GridSpec", "load_spec", "register_axis"]


def __getattr__(name: str):
    if name in __all__:
        from covidct_bench.tune import spec

        return getattr(spec, name)
    raise AttributeError(f"module 'covidct_bench.tune' has no attribute {name!r}")
