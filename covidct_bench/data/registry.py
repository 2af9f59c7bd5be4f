"""Named datasets. Adding one is one subclass of ``DatasetBuilder`` decorated with ``@register_dataset``.

The base class owns the flow every dataset shares: build into a staging folder beside the target,
write the manifest and ``fetch.json`` (options + checksums), then swap it in; a second fetch with
the same options re-hashes the files against the manifest and does nothing else.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from rich.progress import Progress

from covidct_bench import __version__
from covidct_bench.data.manifest import MANIFEST_FILE, dataset_dir, read_manifest, write_manifest
from covidct_bench.errors import BenchError
from covidct_bench.io import sha256_file, staging_dir
from covidct_bench.registry import Registry

FETCH_RECORD = "fetch.json"


class DatasetBuilder:
    """One base class; datasets are small subclasses that implement ``build``."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    default_source: ClassVar[str | None] = None  # upstream URL; None = no public direct download

    def options(self, **kw: Any) -> dict:
        """Options that change the content (stored in fetch.json; a change means rebuild)."""
        return {}

    def build(self, source: str | None, out: Path, progress: Progress | None, **options: Any) -> pd.DataFrame:
        """Write the dataset's files under ``out`` and return its manifest rows."""
        raise NotImplementedError

    # -- shared flow ---------------------------------------------------------------------------
    def fetch(self, root: str | os.PathLike | None = None, source: str | None = None, force: bool = False,
              progress: Progress | None = None, out: str | os.PathLike | None = None, **kw: Any) -> "FetchResult":
        dest = Path(out) if out is not None else dataset_dir(self.name, root)
        options = self.options(**kw)
        if not force and (reused := self._verified(dest, options)) is not None:
            return FetchResult(dest, reused, reused=True)
        with staging_dir(dest) as tmp:
            df = self.build(source, tmp, progress, **options)
            if "dataset" not in df.columns:
                df.insert(1, "dataset", self.name)
            write_manifest(df, tmp / MANIFEST_FILE)
            record = {"dataset": self.name, "source": source or self.default_source, "options": options,
                      "covidct_bench": __version__,
                      "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      "manifest_sha256": sha256_file(tmp / MANIFEST_FILE), "images": len(df)}
            (tmp / FETCH_RECORD).write_text(json.dumps(record, indent=2))
        return FetchResult(dest, len(df), reused=False)

    def _verified(self, dest: Path, options: dict) -> int | None:
        """Number of verified images if ``dest`` holds a complete fetch with these options, else None."""
        rec_path = dest / FETCH_RECORD
        if not rec_path.is_file() or not (dest / MANIFEST_FILE).is_file():
            return None
        try:
            rec = json.loads(rec_path.read_text())
        except json.JSONDecodeError:
            return None
        if rec.get("options") != options or rec.get("manifest_sha256") != sha256_file(dest / MANIFEST_FILE):
            return None
        try:
            df = read_manifest(dest)
        except BenchError:
            return None
        for rel, digest in zip(df["path"], df["sha256"]):
            f = dest / rel
            if not f.is_file() or sha256_file(f) != digest:
                return None
        for col in ("lung_mask_path", "lesion_mask_path", "lesion_multiclass_path"):
            if any(not (dest / p).is_file() for p in df[col].dropna()):
                return None
        return len(df)


@dataclass
class FetchResult:
    path: Path
    images: int
    reused: bool


DATASETS: Registry[DatasetBuilder] = Registry("dataset")


def register_dataset(cls: type[DatasetBuilder]) -> type[DatasetBuilder]:
    DATASETS.register(cls.name)(cls())
    return cls


def get_dataset(name: str) -> DatasetBuilder:
    return DATASETS.get(name)
