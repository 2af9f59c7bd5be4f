"""The manifest: one row per image, the contract between data, ingest and training.

Schema (version 1) — paths are relative to the dataset folder (the folder holding ``manifest.parquet``):

| column | type | meaning |
|---|---|---|
| image_id | string | unique within the dataset |
| dataset | string | registered dataset name |
| path | string | image file, relative to the dataset folder |
| label | int8 | 1 = COVID (positive class), 0 = non-COVID |
| patient_id | string | patient the image comes from (splits never share one) |
| split | string | train / val / test |
| source | string | DOI, hospital/collection, or ``synthetic`` |
| width, height | int32 | pixel size of the stored image |
| sha256 | string | of the image file's bytes |
| lung_mask_path, lesion_mask_path, lesion_multiclass_path | string, nullable | masks (0/255; multiclass 0 bg, 1 GGO, 2 consolidation) |
| caption | string, nullable | figure caption text |
| age | float32, nullable | years |
| sex | string, nullable | ``M`` / ``F`` |
| format, mode | string, nullable | decoded file format (``PNG``/``JPEG``) and PIL mode |
| phash | string, nullable | 64-bit perceptual hash (imagehash.phash, 8x8 DCT), 16 hex digits |
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from covidct_bench.errors import BenchError
from covidct_bench.io import atomic_path

MANIFEST_VERSION = "1"
MANIFEST_FILE = "manifest.parquet"
SPLITS = ("train", "val", "test")

REQUIRED = {
    "image_id": pa.string(),
    "dataset": pa.string(),
    "path": pa.string(),
    "label": pa.int8(),
    "patient_id": pa.string(),
    "split": pa.string(),
    "source": pa.string(),
    "width": pa.int32(),
    "height": pa.int32(),
    "sha256": pa.string(),
}
OPTIONAL = {
    "lung_mask_path": pa.string(),
    "lesion_mask_path": pa.string(),
    "lesion_multiclass_path": pa.string(),
    "caption": pa.string(),
    "age": pa.float32(),
    "sex": pa.string(),
    "format": pa.string(),
    "mode": pa.string(),
    "phash": pa.string(),
}
SCHEMA = pa.schema([pa.field(k, v, nullable=False) for k, v in REQUIRED.items()]
                   + [pa.field(k, v) for k, v in OPTIONAL.items()])


def default_root() -> Path:
    """Where datasets live unless ``--root`` says otherwise: ``$COVIDCT_BENCH_ROOT`` or ``./datasets``."""
    return Path(os.environ.get("COVIDCT_BENCH_ROOT", "datasets"))


def dataset_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    return Path(root if root is not None else default_root()) / name


def validate_manifest(df: pd.DataFrame, where: str = "manifest") -> None:
    """Raise a one-line BenchError naming the column or row that breaks the schema."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise BenchError(f"{where}: missing column(s) {', '.join(missing)}")
    for col in REQUIRED:
        bad = df[col].isna()
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise BenchError(f"{where}: row {i} has no {col}")
    bad = ~df["label"].isin([0, 1])
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise BenchError(f"{where}: row {i} ({df['image_id'].iloc[i]}) has label {df['label'].iloc[i]}, expected 0 or 1")
    bad = ~df["split"].isin(SPLITS)
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise BenchError(f"{where}: row {i} ({df['image_id'].iloc[i]}) has split '{df['split'].iloc[i]}', expected one of {', '.join(SPLITS)}")
    dup = df["image_id"].duplicated()
    if dup.any():
        raise BenchError(f"{where}: image_id {df['image_id'][dup].iloc[0]!r} appears more than once")


def to_table(df: pd.DataFrame) -> pa.Table:
    df = df.copy()
    for col in OPTIONAL:
        if col not in df.columns:
            df[col] = None
    df = df[[f.name for f in SCHEMA]]
    table = pa.Table.from_pandas(df, schema=SCHEMA, preserve_index=False)
    return table.replace_schema_metadata({"covidct_bench.manifest_version": MANIFEST_VERSION})


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Validate and write atomically (temp file, then rename): a failure never leaves half a manifest."""
    path = Path(path)
    validate_manifest(df, where=str(path))
    table = to_table(df)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a manifest; ``df.attrs['root']`` is the folder its paths are relative to."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    if not path.is_file():
        raise BenchError(f"{path}: no manifest here")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a broken file
        raise BenchError(f"{path}: not a readable Parquet manifest ({e})") from None
    version = (table.schema.metadata or {}).get(b"covidct_bench.manifest_version", b"?").decode()
    if version != MANIFEST_VERSION:
        raise BenchError(f"{path}: manifest schema version {version!r}, this covidct-bench reads {MANIFEST_VERSION!r}; rebuild it with `covidct-bench data fetch`")
    df = table.to_pandas()
    validate_manifest(df, where=str(path))
    df.attrs["root"] = str(path.parent)
    return df


def load_manifest(name: str, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """The manifest of dataset ``name`` under ``root`` (default: ``$COVIDCT_BENCH_ROOT`` or ./datasets).

    ``name`` may also be a path to a dataset folder (or its manifest file).
    """
    candidate = Path(name)
    if candidate.suffix == ".parquet" or (candidate.is_dir() and (candidate / MANIFEST_FILE).is_file()):
        return read_manifest(candidate)
    from covidct_bench.data.registry import DATASETS

    DATASETS.get(name)  # unknown name -> one-line error listing the known ones
    folder = dataset_dir(name, root)
    if not (folder / MANIFEST_FILE).is_file():
        raise BenchError(f"{folder / MANIFEST_FILE}: not found; run `covidct-bench data fetch {name} --root {folder.parent}` first")
    return read_manifest(folder)


def absolute(df: pd.DataFrame, column: str = "path") -> pd.Series:
    """Absolute paths for a path column (None stays None)."""
    root = Path(df.attrs.get("root", "."))
    return df[column].map(lambda p: str(root / p) if isinstance(p, str) else None)
