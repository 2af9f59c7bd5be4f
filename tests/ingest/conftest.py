"""A generated PDF corpus with ground truth, plus the bad-input documents, ingested once per session."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from covidct_bench.data.synthetic_pdfs import SynthPdfConfig, write_corpus


def bomb_pdf() -> bytes:
    """A page whose only image claims 30000 x 30000 pixels (a decompression bomb)."""
    import pymupdf

    doc = pymupdf.open()
    page = doc.new_page()
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((100, 100)) * 255).astype(np.uint8)).save(buf, "PNG")
    page.insert_image(pymupdf.Rect(50, 50, 250, 250), stream=buf.getvalue())
    xref = page.get_images()[0][0]
    doc.xref_set_key(xref, "Width", "30000")
    doc.xref_set_key(xref, "Height", "30000")
    return doc.tobytes()


def encrypted_pdf(good: bytes) -> bytes:
    import pymupdf

    return pymupdf.open(stream=good, filetype="pdf").tobytes(
        encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="secret", owner_pw="owner")


BAD = {"empty.pdf": "0 bytes", "truncated.pdf": "truncated", "encrypted.pdf": "encrypted",
       "notpdf.pdf": "not a PDF", "bomb.pdf": "pixel limit"}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """8 synthetic PDFs (2 are version-2 duplicates) + 5 bad documents; returns (folder, truth)."""
    root = tmp_path_factory.mktemp("corpus")
    truth = write_corpus(SynthPdfConfig(out=root / "pdfs", n=8, seed=3, panel_size=160, render_size=96,
                                        duplicate_fraction=0.3))
    good = (root / "pdfs" / "doc-0000.pdf").read_bytes()
    (root / "pdfs" / "empty.pdf").write_bytes(b"")
    (root / "pdfs" / "truncated.pdf").write_bytes(good[: len(good) // 2])
    (root / "pdfs" / "encrypted.pdf").write_bytes(encrypted_pdf(good))
    (root / "pdfs" / "notpdf.pdf").write_text("this is a text file with a .pdf name\n" * 20)
    (root / "pdfs" / "bomb.pdf").write_bytes(bomb_pdf())
    shutil.move(str(root / "pdfs" / "ground_truth.json"), root / "ground_truth.json")
    return root / "pdfs", root / "ground_truth.json", truth


@pytest.fixture(scope="session")
def ingested(corpus, ray_local, tmp_path_factory):
    """The corpus through the Ray Data pipeline."""
    from covidct_bench.ingest.pipeline import IngestConfig, run_ingest

    out = tmp_path_factory.mktemp("ingest") / "out"
    summary = run_ingest(corpus[0], out, IngestConfig(workers=2, timeout_s=60), engine="ray")
    return out, summary
