"""Shared fixtures: data the tests generate (no network, no ../shared needed)."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidct_bench.data.phantoms import render_slice, sample_lesions, sample_patient, to_uint8

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("COVIDCT_BENCH_SHARED", REPO.parent / "shared")) / "data"


def phantom_bytes(seed: int, positive: bool, fmt: str = "PNG", size: int = 48, mode: str = "L") -> bytes:
    anat, les, noise = (np.random.default_rng(s) for s in np.random.SeedSequence([99, seed]).spawn(3))
    p = sample_patient(anat)
    if positive:
        p.lesions = sample_lesions(les)
    img, _, _ = render_slice(p, 0.5, size, noise)
    pil = Image.fromarray(to_uint8(img)).convert(mode)
    buf = io.BytesIO()
    pil.save(buf, format=fmt)
    return buf.getvalue()


def make_covid_ct_source(root: Path, *, zip_extra: dict[str, list[tuple[str, bytes]]] | None = None,
                         list_extra: dict[str, list[str]] | None = None) -> Path:
    """A miniature COVID-CT in the upstream layout: 2 patients/split/class, 2 images each."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Images-processed").mkdir(exist_ok=True)
    for d in ("COVID", "NonCOVID"):
        (root / "Data-split" / d).mkdir(parents=True, exist_ok=True)
    covid_members, noncovid_members = [], []
    meta_rows, nc_rows = [], []
    splits = {"train": [], "val": [], "test": []}
    nc_splits = {"train": [], "val": [], "test": []}
    seed = 0
    for s_i, split in enumerate(("train", "val", "test")):
        for p in range(2):
            pid = s_i * 2 + p + 1
            for k in range(2):
                seed += 1
                name = f"2020.02.{10 + pid:02d}.2002{pid:04d}-p{k + 3}-{seed}%{k}.png"
                # like upstream: some COVID ".png" files hold JPEG bytes, some RGBA
                fmt = "JPEG" if seed % 3 == 0 else "PNG"
                covid_members.append((f"CT_COVID/{name}", phantom_bytes(seed, True, fmt, mode="RGB" if fmt == "JPEG" else "RGBA")))
                splits[split].append(name)
                meta_rows.append({"File name": name, "Patient ID": f"Patient {pid}",
                                  "Age": ["41", "40+", "Young Child", None][(seed // 2) % 4],
                                  "Gender": ["M", "F ", None][seed % 3], "DOI": "" if seed % 2 else f"10.1101/x{pid}",
                                  "Captions": str([f"Figure {k + 1}. Chest CT of patient {pid} with ground-glass opacity."])})
                seed += 1
                nc_name = f"{pid}%{k}.jpg"
                noncovid_members.append((f"CT_NonCOVID/{nc_name}", phantom_bytes(seed, False, "JPEG")))
                nc_splits[split].append(nc_name)
                nc_rows.append({"image name": nc_name, "patient id": f"crawled_patient_{pid}"})
    for name, extra_key in (("CT_COVID.zip", "COVID"), ("CT_NonCOVID.zip", "NonCOVID")):
        members = covid_members if extra_key == "COVID" else noncovid_members
        with zipfile.ZipFile(root / "Images-processed" / name, "w") as zf:
            zf.writestr(f"{name[:-4]}/", b"")
            for arc, data in members + (zip_extra or {}).get(extra_key, []):
                zf.writestr(arc, data)
    for split in splits:
        extra = (list_extra or {}).get(split, [])
        (root / f"Data-split/COVID/{split}CT_COVID.txt").write_text("\n".join(splits[split] + extra))
        (root / f"Data-split/NonCOVID/{split}CT_NonCOVID.txt").write_text("\n".join(nc_splits[split]) + "\n")
        pids = sorted({r["patient id"] for r in nc_rows if r["image name"] in nc_splits[split]})
        pd.DataFrame({"patient id": pids}).to_csv(root / f"Data-split/NonCOVID/CT_NonCOVID_{split}_id.csv")
    meta = pd.DataFrame(meta_rows)
    meta.to_excel(root / "COVID-CT-MetaInfo.xlsx", index=False)
    pd.DataFrame(nc_rows).to_csv(root / "NonCOVID-CT-MetaInfo.csv")
    return root


@pytest.fixture(scope="session")
def covid_ct_source(tmp_path_factory) -> Path:
    return make_covid_ct_source(tmp_path_factory.mktemp("upstream") / "covid-ct")


def make_medseg_source(root: Path, n: int = 4, size: int = 40) -> Path:
    for d in ("images", "lesion", "lesion-multiclass"):
        (root / "train" / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.open(io.BytesIO(phantom_bytes(100 + i, True, "JPEG", size=size))).save(root / f"train/images/{i * 3}.jpg")
        multi = np.zeros((size, size), np.uint8)
        multi[5:15, 5:15] = 1
        multi[20:25, 20:30] = 2
        pal = Image.fromarray(multi, mode="P")
        pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
        pal.save(root / f"train/lesion-multiclass/{i * 3}.png")
        Image.fromarray(((multi > 0) * 255).astype(np.uint8)).save(root / f"train/lesion/{i * 3}.png")
    return root


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic dataset (generated once per session) under a datasets root."""
    from covidct_bench.data import get_dataset

    root = tmp_path_factory.mktemp("datasets")
    get_dataset("synthetic").fetch(root=root, n=24, size=64, slices_per_patient=2, seed=3)
    return root


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the session (2 CPUs, no dashboard)."""
    import ray

    from covidct_bench.data.cache import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "covid-ct").is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    return SHARED_DATA
