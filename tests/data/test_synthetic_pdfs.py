import json

import pymupdf

from covidct_bench.data.synthetic_pdfs import SynthPdfConfig, write_corpus


def test_corpus_matches_its_ground_truth(tmp_path):
    cfg = SynthPdfConfig(out=tmp_path, n=5, seed=11, panel_size=96, render_size=64, duplicate_fraction=0.5)
    truth = write_corpus(cfg)
    assert json.loads((tmp_path / "ground_truth.json").read_text()) == truth
    kinds = set()
    for d in truth["documents"]:
        doc = pymupdf.open(tmp_path / d["file"])
        assert doc.page_count == d["pages"]
        text = "".join(p.get_text() for p in doc)
        assert d["doi"] in text
        images = sum(len(p.get_images()) for p in doc)
        assert images == len(d["figures"])
        for f in d["figures"]:
            kinds.add(f["kind"])
            assert " ".join(f["caption"].split())[:40] in " ".join(doc[f["page"]].get_text().split())
            w, h = f["image_size"]
            assert all(0 <= p["box"][0] < p["box"][2] <= w + 1 and 0 <= p["box"][1] < p["box"][3] <= h + 1
                       for p in f["panels"])
    assert "ct" in kinds
    assert any(d["version2_of"] for d in truth["documents"])


def test_same_seed_same_corpus(tmp_path):
    a = write_corpus(SynthPdfConfig(out=tmp_path / "a", n=2, seed=4, panel_size=96, render_size=64))
    b = write_corpus(SynthPdfConfig(out=tmp_path / "b", n=2, seed=4, panel_size=96, render_size=64))
    assert a["documents"] == b["documents"]
