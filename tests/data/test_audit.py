import io

import numpy as np
import pandas as pd
from PIL import Image

from covidct_bench.data import write_manifest, read_manifest
from covidct_bench.data.audit import audit_manifest, hamming_pairs
from covidct_bench.data.images import inspect_file
from tests.conftest import phantom_bytes


def _dataset(tmp_path):
    """Known answer: 1 leaked patient, 1 exact duplicate across splits, 1 re-encoded near duplicate."""
    (tmp_path / "img").mkdir()
    rows = []

    def add(name, data, label, patient, split):
        (tmp_path / "img" / name).write_bytes(data)
        rows.append({"image_id": name, "dataset": "t", "path": f"img/{name}", "label": label,
                     "patient_id": patient, "split": split, "source": "test",
                     **inspect_file(tmp_path / "img" / name)})

    for i in range(6):
        add(f"u{i}.png", phantom_bytes(1000 + i, i % 2 == 1, size=64), i % 2, f"p{i}", ["train", "val", "test"][i % 3])
    add("leak.png", phantom_bytes(2000, True, size=64), 1, "p0", "test")  # p0 is also in train
    add("copy.png", (tmp_path / "img" / "u1.png").read_bytes(), 1, "p9", "test")  # u1 is in val
    buf = io.BytesIO()
    Image.open(tmp_path / "img" / "u2.png").convert("L").save(buf, "JPEG", quality=90)
    add("reenc.jpg", buf.getvalue(), 0, "p8", "train")  # u2 is in test
    df = pd.DataFrame(rows)
    write_manifest(df, tmp_path / "manifest.parquet")
    return read_manifest(tmp_path)


def test_known_answer(tmp_path):
    a = audit_manifest(_dataset(tmp_path))
    assert a["counts"]["test"] == {"covid": 3, "non_covid": 1}
    assert a["patient_leakage"] == 1 and a["leaked_patients"] == ["p0"]
    assert a["exact_duplicates_across_splits"] == 1 and a["exact_duplicates_within_splits"] == 0
    assert a["near_duplicates_across_splits"] == 1
    ex = a["near_duplicates"]["examples_across_splits"][0]
    assert {ex["a"], ex["b"]} == {"u2.png", "reenc.jpg"} and ex["labels"] == [0, 0]
    assert a["extension_mismatch"] == 0 and a["formats"] == {"PNG": 8, "JPEG": 1}


def test_missing_phash_is_computed(tmp_path):
    df = _dataset(tmp_path)
    full = audit_manifest(df)
    df2 = df.copy()
    df2["phash"] = None
    assert audit_manifest(df2)["near_duplicates_across_splits"] == full["near_duplicates_across_splits"]


def test_hamming_pairs_matches_brute_force():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**63, size=300, dtype=np.uint64)
    h[5] = h[17] ^ np.uint64(0b101)  # distance 2
    i, j, d = hamming_pairs(h, 8, chunk=64)
    brute = {(a, b) for a in range(300) for b in range(a + 1, 300) if bin(int(h[a] ^ h[b])).count("1") <= 8}
    assert set(zip(i.tolist(), j.tolist())) == brute and (5, 17) in brute
