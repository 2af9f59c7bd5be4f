"""The ``covid-ct`` dataset (Zhao, Yang et al. 2020) with its official patient-level split.

Upstream: github.com/UCSD-AI4H/COVID-CT, branch master. The same code reads a local copy in the
same layout (``--source DIR`` or ``file://``). Labels here: COVID = 1 (positive). The upstream
baselines use 0 = COVID and score NonCOVID as positive; we do not.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pandas as pd

from covidct_bench.data.fetch import Source, safe_extract
from covidct_bench.data.images import inspect_file, parallel_map
from covidct_bench.data.manifest import SPLITS
from covidct_bench.data.registry import DatasetBuilder, register_dataset
from covidct_bench.errors import BenchError

UPSTREAM = "https://raw.githubusercontent.com/UCSD-AI4H/COVID-CT/master"
CLASSES = {"COVID": 1, "NonCOVID": 0}  # split-list folder -> label
ZIPS = {"COVID": "Images-processed/CT_COVID.zip", "NonCOVID": "Images-processed/CT_NonCOVID.zip"}
SPLIT_LISTS = {(c, s): f"Data-split/{c}/{s}CT_{c}.txt" for c in CLASSES for s in SPLITS}
META_XLSX = "COVID-CT-MetaInfo.xlsx"
REQUIRED = [*ZIPS.values(), *SPLIT_LISTS.values(), META_XLSX]
# Present in some copies of the upstream layout (and in ../shared/data): richer metadata and the
# non-COVID patient ids. Without NonCOVID-CT-MetaInfo.csv, non-COVID patients fall back to the file
# name stem before '%', which groups the slices the upstream authors cut from one source image.
OPTIONAL = ["COVID-CT-MetaInfo.csv", "NonCOVID-CT-MetaInfo.csv",
            *(f"Data-split/NonCOVID/CT_NonCOVID_{s}_id.csv" for s in SPLITS)]
MEDRXIV = re.compile(r"^(20\d\d\.\d\d\.\d\d\.\d+)")


def read_split_list(path: Path) -> list[tuple[int, str]]:
    """(line number, file name) for each non-blank line."""
    names = []
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        name = line.strip()
        if name:
            names.append((i, name))
    return names


def parse_captions(raw) -> str | None:
    """The metadata stores captions as a Python-list-like string; return plain text."""
    if raw is None or (isinstance(raw, float) and pd.isna(raw)):
        return None
    text = str(raw).strip()
    if text.startswith("["):
        try:
            items = ast.literal_eval(text)
            if isinstance(items, (list, tuple)):
                text = " ".join(str(x).strip() for x in items if str(x).strip())
        except (ValueError, SyntaxError):
            text = text.strip("[]").strip("'\"")
    return text or None


def read_covid_meta(raw: Path) -> pd.DataFrame:
    csv, xlsx = raw / "COVID-CT-MetaInfo.csv", raw / META_XLSX
    try:
        meta = pd.read_csv(csv) if csv.is_file() else pd.read_excel(xlsx)
    except Exception as e:
        name = csv.name if csv.is_file() else META_XLSX
        raise BenchError(f"{name}: cannot read metadata ({e})") from None
    need = ["File name", "Patient ID"]
    if missing := [c for c in need if c not in meta.columns]:
        raise BenchError(f"{csv.name if csv.is_file() else META_XLSX}: missing column(s) {', '.join(missing)}")
    meta = meta[meta["File name"].notna()].copy()
    meta["File name"] = meta["File name"].astype(str).str.strip()
    return meta.drop_duplicates("File name").set_index("File name")


def _clean(v) -> str | None:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return None
    s = str(v).strip()
    return s or None


def covid_row_meta(name: str, meta: pd.DataFrame) -> dict:
    prefix = MEDRXIV.match(name)
    if name not in meta.index:
        # No metadata row: group by source paper, the conservative choice for leakage.
        return {"patient_id": f"paper:{prefix.group(1) if prefix else Path(name).stem}",
                "source": f"10.1101/{prefix.group(1)}" if prefix else "unknown"}
    m = meta.loc[name]
    age = parse_age(m.get("Age"))
    sex = (_clean(m.get("Gender")) or "").upper()[:1] or None
    doi = _clean(m.get("DOI"))
    return {"patient_id": _clean(m.get("Patient ID")) or f"paper:{prefix.group(1) if prefix else name}",
            "source": doi or (f"10.1101/{prefix.group(1)}" if prefix else "unknown"),
            "age": age,
            "sex": sex if sex in ("M", "F") else None,
            "caption": parse_captions(m.get("Captions"))}


def parse_age(raw) -> float | None:
    """Years as a number: '41' -> 41, '40+' -> 40 (its lower bound); words ('Young Child') -> None."""
    m = re.match(r"^\s*(\d+(?:\.\d+)?)", _clean(raw) or "")
    return float(m.group(1)) if m else None


def noncovid_patients(raw: Path) -> dict[str, str]:
    path = raw / "NonCOVID-CT-MetaInfo.csv"
    if not path.is_file():
        return {}
    df = pd.read_csv(path)
    if not {"image name", "patient id"} <= set(df.columns):
        raise BenchError("NonCOVID-CT-MetaInfo.csv: expected columns 'image name' and 'patient id'")
    return {str(k).strip(): str(v).strip() for k, v in zip(df["image name"], df["patient id"])}


@register_dataset
class CovidCT(DatasetBuilder):
    name = "covid-ct"
    description = "COVID-CT: 349 COVID / 397 non-COVID CT images from papers, official patient-level split"
    default_source = UPSTREAM

    def build(self, source, out, progress, **options) -> pd.DataFrame:
        src = Source(source, self.default_source)
        raw = out / "raw"
        for rel in REQUIRED:
            src.download(rel, raw / rel, progress, required=True)
        for rel in OPTIONAL:
            src.download(rel, raw / rel, progress, required=False)
        members: dict[str, dict[str, str]] = {}
        for cls, rel in ZIPS.items():
            names = safe_extract(raw / rel, out / "images", Path(rel).name, progress)
            members[cls] = {Path(n).name: f"images/{n}" for n in names}
            (raw / rel).unlink()  # extracted and checked; the images are what we keep
        (raw / "Images-processed").rmdir()

        meta = read_covid_meta(raw)
        nc_patients = noncovid_patients(raw)
        rows, seen = [], {}
        for (cls, split), rel in SPLIT_LISTS.items():
            zip_name = Path(ZIPS[cls]).name
            for line, name in read_split_list(raw / rel):
                if name not in members[cls]:
                    raise BenchError(f"{rel} line {line}: {name!r} is not in {zip_name}")
                if (cls, name) in seen:
                    raise BenchError(f"{rel} line {line}: {name!r} is already listed in {seen[(cls, name)]}")
                seen[(cls, name)] = rel
                row = {"image_id": f"CT_{cls}/{name}", "path": members[cls][name], "label": CLASSES[cls],
                       "split": split}
                if cls == "COVID":
                    row.update(covid_row_meta(name, meta))
                else:
                    pid = nc_patients.get(name) or f"noncovid:{name.split('%')[0].rsplit('.', 1)[0]}"
                    row.update(patient_id=pid, source=pid.split("_patient")[0] if "_patient" in pid else "unknown")
                rows.append(row)
        df = pd.DataFrame(rows)
        task = progress.add_task("verify images", total=len(df)) if progress else None
        info = parallel_map(lambda r: inspect_file(out / r, r.removeprefix("images/")), df["path"],
                            on_done=(lambda: progress.advance(task)) if progress else None)
        df = pd.concat([df, pd.DataFrame(info)], axis=1)
        listed = set(df["path"])
        unlisted = sorted(p for m in members.values() for p in m.values() if p not in listed)
        for p in unlisted:  # images no split list names are not part of the benchmark
            (out / p).unlink()
        return df
