"""Dataset audit: class balance per split, patient leakage, exact and near duplicates, sizes.

Near-duplicates use a 64-bit perceptual hash (``imagehash.phash``: 32x32 greyscale, DCT, the 8x8
low frequencies thresholded at their median). Two images are near-duplicates when the Hamming
distance of their hashes is at most ``NEAR_THRESHOLD`` bits and their bytes differ (byte-identical
files are exact duplicates and counted only there). Duplicates are counted as pairs of images.
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from covidct_bench import LABELS
from covidct_bench.data.images import open_image, parallel_map, phash_hex
from covidct_bench.data.manifest import SPLITS

NEAR_THRESHOLD = 4  # bits out of 64; calibrated on COVID-CT: <= 4 re-encoded copies and adjacent slices,
#                     >= 6 already different scans (CT slices share low frequencies)
HISTOGRAM_MAX = 10
MAX_EXAMPLES = 20
EXTENSIONS = {"PNG": {".png"}, "JPEG": {".jpg", ".jpeg"}, "TIFF": {".tif", ".tiff"}, "BMP": {".bmp"}}


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)


def hamming_pairs(hashes: np.ndarray, threshold: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i < j with popcount(h_i xor h_j) <= threshold (chunked, O(n^2) bit operations)."""
    ii, jj, dd = [], [], []
    n = len(hashes)
    for start in range(0, n, chunk):
        block = hashes[start:start + chunk, None] ^ hashes[None, :]
        dist = _popcount(block)
        i, j = np.nonzero(dist <= threshold)
        i = i + start
        keep = j > i
        ii.append(i[keep]); jj.append(j[keep]); dd.append(dist[i[keep] - start, j[keep]])
    cat = lambda xs: np.concatenate(xs) if xs else np.array([], np.int64)  # noqa: E731
    return cat(ii), cat(jj), cat(dd)


def ensure_phash(df: pd.DataFrame) -> pd.Series:
    """Use the manifest's hashes; compute the missing ones from the image files."""
    ph = df["phash"] if "phash" in df.columns else pd.Series([None] * len(df), index=df.index)
    missing = ph.isna()
    if missing.any():
        root = Path(df.attrs.get("root", "."))
        computed = parallel_map(lambda rel: phash_hex(open_image(root / rel, rel)), df.loc[missing, "path"])
        ph = ph.copy()
        ph[missing] = computed
    return ph


def _pair_summary(df: pd.DataFrame, i: np.ndarray, j: np.ndarray, dist: np.ndarray | None = None) -> dict:
    split, label, pid, ids = (df[c].to_numpy() for c in ("split", "label", "patient_id", "image_id"))
    across = split[i] != split[j]
    examples = []
    for k in np.flatnonzero(across)[:MAX_EXAMPLES]:
        ex = {"a": ids[i[k]], "b": ids[j[k]], "splits": [split[i[k]], split[j[k]]],
              "labels": [int(label[i[k]]), int(label[j[k]])], "same_patient": bool(pid[i[k]] == pid[j[k]])}
        if dist is not None:
            ex["distance"] = int(dist[k])
        examples.append(ex)
    return {"within_splits": int((~across).sum()), "across_splits": int(across.sum()),
            "across_splits_different_patients": int((across & (pid[i] != pid[j])).sum()),
            "label_conflicts": int((label[i] != label[j]).sum()),
            "split_pairs": {f"{a}-{b}": int(n) for (a, b), n in sorted(Counter(
                tuple(sorted((split[x], split[y]))) for x, y in zip(i[across], j[across])).items())},
            "examples_across_splits": examples}


def _stats(s: pd.Series) -> dict:
    return {"min": int(s.min()), "median": float(s.median()), "max": int(s.max())} if len(s) else {}


def audit_manifest(df: pd.DataFrame, near_threshold: int = NEAR_THRESHOLD) -> dict:
    """Everything a user should know before training on a manifest, as one JSON-able dict."""
    df = df.reset_index(drop=True)
    counts = {s: {LABELS[1]: int(((df.split == s) & (df.label == 1)).sum()),
                  LABELS[0]: int(((df.split == s) & (df.label == 0)).sum())}
              for s in SPLITS if (df.split == s).any()}
    patients = {s: int(df.loc[df.split == s, "patient_id"].nunique()) for s in counts}
    per_patient = df.groupby("patient_id")["split"].nunique()
    leaked = sorted(per_patient[per_patient > 1].index)

    # exact duplicates: pairs of rows sharing a sha256
    ei, ej = [], []
    for idx in df.groupby("sha256").indices.values():
        for a, b in combinations(sorted(idx), 2):
            ei.append(a); ej.append(b)
    exact = _pair_summary(df, np.asarray(ei, int), np.asarray(ej, int))

    hashes = np.array([int(h, 16) for h in ensure_phash(df)], dtype=np.uint64)
    ni, nj, nd = hamming_pairs(hashes, max(near_threshold, HISTOGRAM_MAX))
    sha, split = df["sha256"].to_numpy(), df["split"].to_numpy()
    differ = sha[ni] != sha[nj]
    across_by_distance = {int(k): int(((nd == k) & differ & (split[ni] != split[nj])).sum())
                          for k in range(HISTOGRAM_MAX + 1)}
    near_ok = differ & (nd <= near_threshold)
    near = _pair_summary(df, ni[near_ok], nj[near_ok], nd[near_ok])

    sizes = {LABELS[lab]: {"width": _stats(g.width), "height": _stats(g.height)}
             for lab, g in df.groupby("label")}
    optional = {c: int(df[c].notna().sum()) for c in
                ("lung_mask_path", "lesion_mask_path", "caption", "age", "sex") if c in df.columns}
    return {
        "dataset": str(df["dataset"].iloc[0]) if len(df) else None,
        "images": len(df),
        "positive_class": "covid (label 1)",
        "counts": counts,
        "patients": patients,
        "patient_leakage": len(leaked),
        "leaked_patients": leaked[:MAX_EXAMPLES],
        "exact_duplicates_within_splits": exact["within_splits"],
        "exact_duplicates_across_splits": exact["across_splits"],
        "near_duplicates_within_splits": near["within_splits"],
        "near_duplicates_across_splits": near["across_splits"],
        "exact_duplicates": exact,
        "near_duplicates": {"method": f"imagehash.phash 64-bit, Hamming distance <= {near_threshold}, bytes differ",
                            "threshold": near_threshold, **near,
                            "across_splits_by_distance": across_by_distance},
        "sizes": sizes,
        "formats": {str(k): int(v) for k, v in df["format"].value_counts().items()} if "format" in df else {},
        "modes": {str(k): int(v) for k, v in df["mode"].value_counts().items()} if "mode" in df else {},
        # File properties that differ by class are shortcuts a model can learn instead of disease.
        "modes_by_class": {LABELS[lab]: {str(k): int(v) for k, v in g.value_counts().items()}
                           for lab, g in df.groupby("label")["mode"]} if "mode" in df else {},
        "extension_mismatch": int(sum(1 for p, f in zip(df["path"], df.get("format", [None] * len(df)))
                                      if f in EXTENSIONS and Path(p).suffix.lower() not in EXTENSIONS[f])),
        "available": optional,
    }


def audit_tables(a: dict, brief: bool = False) -> list:
    """The audit as rich renderables (tables and lines), for the terminal; ``brief``: counts and checks only."""
    from rich.table import Table

    title = f"{a['dataset']}: {a['images']} images (positive class: {a['positive_class']})"
    t = Table(title=title, min_width=len(title))
    for col in ("split", "covid", "non_covid", "patients"):
        t.add_column(col, justify="right" if col != "split" else "left")
    for split, c in a["counts"].items():
        t.add_row(split, str(c["covid"]), str(c["non_covid"]), str(a["patients"][split]))
    near = a["near_duplicates"]
    checks = Table("check", "within splits", "across splits", "note", title="leakage and duplicates")
    checks.add_row("patients in more than one split", "", str(a["patient_leakage"]), ", ".join(a["leaked_patients"][:5]))
    checks.add_row("exact duplicates (sha256, pairs)", str(a["exact_duplicates_within_splits"]),
                   str(a["exact_duplicates_across_splits"]), f"label conflicts: {a['exact_duplicates']['label_conflicts']}")
    checks.add_row(f"near duplicates (pHash <= {near['threshold']} bits, pairs)", str(near["within_splits"]),
                   str(near["across_splits"]), f"label conflicts: {near['label_conflicts']}")
    out: list = [t, checks]
    out += [f"  near-duplicate across splits: {ex['a']} ({ex['splits'][0]}, label {ex['labels'][0]}) ~ "
            f"{ex['b']} ({ex['splits'][1]}, label {ex['labels'][1]}), distance {ex['distance']}"
            for ex in near["examples_across_splits"][:3 if brief else 10]]
    if brief:
        return out
    sizes = Table("class", "width min/median/max", "height min/median/max", title="image sizes")
    for cls, s in a["sizes"].items():
        sizes.add_row(cls, "{min}/{median:g}/{max}".format(**s["width"]), "{min}/{median:g}/{max}".format(**s["height"]))
    return out + [sizes, f"formats: {a['formats']}  extension/content mismatches: {a['extension_mismatch']}",
                  f"image modes by class: {a['modes_by_class']}", f"available: {a['available']}"]
