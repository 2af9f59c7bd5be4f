"""Datasets as verified Parquet manifests (see ``manifest`` for the schema)."""

from covidct_bench.data.manifest import absolute, dataset_dir, default_root, load_manifest, read_manifest, write_manifest
from covidct_bench.data.registry import DATASETS, DatasetBuilder, get_dataset, register_dataset

# Registering modules: importing them adds their entries to DATASETS.
from covidct_bench.data import covid_ct, medseg, synthetic  # noqa: E402,F401  isort:skip

__all__ = ["DATASETS", "DatasetBuilder", "absolute", "dataset_dir", "default_root", "get_dataset",
           "load_manifest", "read_manifest", "register_dataset", "write_manifest"]
