"""The ``medseg`` dataset: MedSeg COVID-19 CT slices with lesion masks (Inf-Net's packaging).

Original hospital CT slices (not figures from papers), all COVID-positive, with binary lesion masks
(0/255) and multiclass masks (0 background, 1 ground-glass opacity, 2 consolidation). There is no
public direct-download URL for this packaging, so ``--source`` (a folder or ``file://`` URL) is
required. The slices carry no patient ids: each slice is its own patient here, which is optimistic
for leakage if they are ever split; all rows are ``train`` (used as extra positives, e.g. COVID-Seg).
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from covidct_bench.data.fetch import Source
from covidct_bench.data.images import inspect_file, load_mask, parallel_map
from covidct_bench.data.registry import DatasetBuilder, register_dataset
from covidct_bench.errors import BenchError

LAYOUT = {"images": "train/images", "lesion": "train/lesion", "multiclass": "train/lesion-multiclass"}
SOURCE_NAME = "MedSeg COVID-19 CT segmentation"


def local_folder(src: Source) -> Path:
    if not src.base.startswith("file://"):
        raise BenchError(f"--source {src.display}: medseg needs a local folder or file:// URL (no directory listing over HTTP)")
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(src.base).path))


@register_dataset
class MedSeg(DatasetBuilder):
    name = "medseg"
    description = "MedSeg COVID-19 CT slices (Inf-Net packaging) with binary + multiclass lesion masks"

    def build(self, source, out, progress, **options) -> pd.DataFrame:
        if not source:
            raise BenchError("medseg has no public direct-download URL; pass --source DIR (with train/images, train/lesion, train/lesion-multiclass)")
        src = Source(source, "")
        folder = local_folder(src)
        images_dir = folder / LAYOUT["images"]
        if not images_dir.is_dir():
            raise BenchError(f"--source {src.display}: no {LAYOUT['images']}/ folder (expected the Inf-Net layout)")
        stems = sorted((p.stem for p in images_dir.glob("*.jpg")), key=lambda s: (len(s), s))
        if not stems:
            raise BenchError(f"--source {src.display}: {LAYOUT['images']}/ holds no .jpg slices")
        rows = []
        task = progress.add_task("copy medseg slices", total=len(stems)) if progress else None
        for stem in stems:
            rels = {"path": f"{LAYOUT['images']}/{stem}.jpg", "lesion_mask_path": f"{LAYOUT['lesion']}/{stem}.png",
                    "lesion_multiclass_path": f"{LAYOUT['multiclass']}/{stem}.png"}
            for rel in rels.values():
                src.download(rel, out / rel, None, required=True)
            rows.append({"image_id": f"medseg/{stem}", **rels, "label": 1, "patient_id": f"medseg_{stem}",
                         "split": "train", "source": SOURCE_NAME})
            if progress:
                progress.advance(task)
        df = pd.DataFrame(rows)
        info = pd.DataFrame(parallel_map(lambda r: inspect_file(out / r, r), df["path"]))
        df = pd.concat([df, info], axis=1)
        for row in df.itertuples():
            for col, allowed in (("lesion_mask_path", {0, 255}), ("lesion_multiclass_path", {0, 1, 2})):
                rel = getattr(row, col)
                mask = load_mask(out / rel, rel)
                if mask.shape != (row.height, row.width):
                    raise BenchError(f"{rel}: mask is {mask.shape[1]}x{mask.shape[0]}, image {row.path} is {row.width}x{row.height}")
                if bad := set(np.unique(mask).tolist()) - allowed:
                    raise BenchError(f"{rel}: unexpected mask values {sorted(bad)[:5]} (expected {sorted(allowed)})")
        return df
