"""The ``synthetic`` dataset: phantom chest-CT slices with lung and lesion masks (see ``phantoms``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from covidct_bench.data.images import inspect_file, parallel_map
from covidct_bench.data.phantoms import paper_style, render_slice, sample_lesions, sample_patient, to_uint8
from covidct_bench.data.registry import DatasetBuilder, register_dataset


class SynthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(120, ge=6, description="number of images")
    seed: int = 0
    size: int = Field(256, ge=32, le=1024, description="slice size in pixels before paper-style margins")
    slices_per_patient: int = Field(4, ge=1, le=32)
    style: Literal["clean", "paper"] = "clean"
    val_fraction: float = Field(0.2, ge=0.0, lt=0.5)
    test_fraction: float = Field(0.2, ge=0.0, lt=0.5)


def plan_patients(cfg: SynthConfig) -> pd.DataFrame:
    """Patients with label and split: balanced classes, split by patient, stratified by label."""
    n_pat = max(6, math.ceil(cfg.n / cfg.slices_per_patient))
    rng = np.random.default_rng([cfg.seed, 0])
    labels = np.arange(n_pat) % 2
    rng.shuffle(labels)
    split = np.empty(n_pat, dtype=object)
    for lab in (0, 1):
        idx = np.flatnonzero(labels == lab)
        rng.shuffle(idx)
        n_test = max(1, round(len(idx) * cfg.test_fraction)) if cfg.test_fraction else 0
        n_val = max(1, round(len(idx) * cfg.val_fraction)) if cfg.val_fraction else 0
        split[idx[:n_test]] = "test"
        split[idx[n_test:n_test + n_val]] = "val"
        split[idx[n_test + n_val:]] = "train"
    counts = np.full(n_pat, cfg.slices_per_patient)
    extra = n_pat * cfg.slices_per_patient - cfg.n
    for i in range(extra):  # trim from the end so there are exactly n images
        counts[n_pat - 1 - (i % n_pat)] -= 1
    return pd.DataFrame({"patient": np.arange(n_pat), "label": labels, "split": split, "slices": counts})


def make_patient_slices(cfg: SynthConfig, patient: int, label: int, slices: int, out: Path) -> list[dict]:
    # Independent streams: anatomy, lesions, noise, style. Only the lesion stream depends on label use.
    anat, les, noise, style = (np.random.default_rng(s) for s in np.random.SeedSequence([cfg.seed, 1, patient]).spawn(4))
    p = sample_patient(anat)
    lesions = sample_lesions(les)
    if label == 1:
        p.lesions = lesions
    zs = np.sort(anat.uniform(0.2, 0.8, size=slices))
    rows = []
    for k, z in enumerate(zs):
        img, lung, lesion = render_slice(p, float(z), cfg.size, noise)
        stem = f"p{patient:04d}_s{k:02d}"
        img8, lung8, lesion_bin = to_uint8(img), lung.astype(np.uint8) * 255, (lesion > 0).astype(np.uint8) * 255
        masks = [lung8, lesion_bin, lesion]
        if cfg.style == "paper":
            pil, masks, quality = paper_style(img8, masks, style, lung)
            rel = f"images/{stem}.jpg"
            pil.save(out / rel, quality=quality)
        else:
            rel = f"images/{stem}.png"
            Image.fromarray(img8).save(out / rel)
        for folder, m in zip(("lung_masks", "lesion_masks", "lesion_multiclass"), masks):
            Image.fromarray(m).save(out / folder / f"{stem}.png")
        rows.append({"image_id": stem, "path": rel, "label": label, "patient_id": f"synth_{patient:04d}",
                     "lung_mask_path": f"lung_masks/{stem}.png", "lesion_mask_path": f"lesion_masks/{stem}.png",
                     "lesion_multiclass_path": f"lesion_multiclass/{stem}.png", "z": float(z)})
    return rows


@register_dataset
class Synthetic(DatasetBuilder):
    name = "synthetic"
    description = "phantom chest-CT slices with lung + lesion masks, generated locally (the embedded default)"

    def options(self, **kw) -> dict:
        return SynthConfig(**kw).model_dump()

    def build(self, source, out, progress, **options) -> pd.DataFrame:
        cfg = SynthConfig(**options)
        for folder in ("images", "lung_masks", "lesion_masks", "lesion_multiclass"):
            (out / folder).mkdir(parents=True)
        plan = plan_patients(cfg)
        task = progress.add_task("synthesise phantoms", total=cfg.n) if progress else None

        def one(row) -> list[dict]:
            rows = make_patient_slices(cfg, int(row.patient), int(row.label), int(row.slices), out)
            if progress:
                progress.advance(task, len(rows))
            return rows

        per_patient = parallel_map(one, list(plan.itertuples()), threads=4)
        df = pd.DataFrame([r for rows in per_patient for r in rows]).drop(columns="z")
        split = dict(zip(plan["patient"].map(lambda i: f"synth_{i:04d}"), plan["split"]))
        df["split"] = df["patient_id"].map(split)
        df["source"] = "synthetic"
        info = pd.DataFrame(parallel_map(lambda rel: inspect_file(out / rel, rel), df["path"]))
        return pd.concat([df, info], axis=1)
