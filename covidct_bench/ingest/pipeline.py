"""The ingest pipeline: PDFs -> figures -> panels -> CT score, chest crop, labels -> tables + manifest.

``process_document`` is the whole per-document work as a plain function (the single-process
baseline calls it in a loop). ``run_ingest`` runs it over a folder with Ray Data: the PDFs are read
by ``read_binary_files`` and each actor hands documents to an isolated child process
(``IsolatedRunner``) so a document that keeps MuPDF busy past ``timeout_s`` or blows its memory
limit is killed and reported, never taking the pipeline down. The driver streams results, writes
the panel images, marks duplicates and writes, all into a staging folder renamed into place:

* ``figures.parquet`` — one row per panel (schema in ``FIGURE_COLUMNS``),
* ``errors.parquet`` — one row per document or image that failed, with the reason,
* ``manifest.parquet`` — the labelled, non-duplicate CT panels in the data layer's schema,
* ``ingest.json`` — config, counts and timings.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import select
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from covidct_bench.errors import BenchError
from covidct_bench.ingest.captions import LABELS, parse_caption
from covidct_bench.ingest.detect import ct_score, features
from covidct_bench.ingest.panels import chest_crop, split_panels
from covidct_bench.ingest.pdf import DocumentError, citing_sentences, read_document

FIGURE_COLUMNS = {
    "panel_id": "string: <doc sha256[:12]>-f<figure>-p<panel>, unique in the corpus",
    "doc": "string: PDF file name", "doc_sha256": "string", "doi": "string, nullable",
    "page": "int: 0-based page", "figure_index": "int: 0-based figure order in the document",
    "figure_number": "string, nullable: the number in the caption ('3', 'S2')",
    "panel_index": "int: 0-based panel order in the figure (reading order)", "panel_letter": "string, nullable",
    "image_index": "int: which embedded image of the figure", "xref": "int: PDF object of the image",
    "bbox": "list<int>[4]: panel x0,y0,x1,y1 in the embedded image's pixels",
    "page_bbox": "list<float>[4]: the image's placement on the page (PDF points)",
    "crop_box": "list<int>[4]: chest crop x0,y0,x1,y1 in the embedded image's pixels",
    "caption": "string, nullable", "caption_position": "above | below, nullable",
    "is_ct": "bool: ct_score >= threshold", "ct_score": "float: probability of a chest CT slice",
    "label": "int, nullable: 1 COVID, 0 non-COVID", "label_text": "covid | non_covid | mixed | unknown",
    "label_source": "caption_panel | caption | text | review | none", "label_confidence": "float",
    "age": "float, nullable", "sex": "M | F, nullable", "illness_day": "int, nullable", "severity": "string, nullable",
    "image_path": "string: saved crop (CT) or panel, relative to the output folder",
    "width": "int", "height": "int", "sha256": "string: of the saved file",
    "pixel_sha256": "string: of the pixels (exact duplicates)", "phash": "string: 64-bit pHash, hex",
    "duplicate_of": "string, nullable: panel_id this one duplicates", "duplicate_kind": "exact | near, nullable",
}
ERROR_COLUMNS = ("doc", "page", "xref", "stage", "reason")


class IngestConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ct_threshold: float = Field(0.5, ge=0.0, le=1.0, description="ct_score at or above which a panel is a CT")
    timeout_s: float = Field(120.0, gt=0, description="per-document time limit")
    max_pixels: int = Field(50_000_000, ge=1, description="largest embedded image decoded (width x height)")
    max_memory_mb: int = Field(8192, ge=0, description="address-space limit of a document worker (0: none)")
    min_image_side: int = Field(64, ge=1, description="smaller embedded images (logos, icons) are ignored")
    min_panel_px: int = Field(48, ge=8)
    crop_margin: float = Field(0.02, ge=0.0, le=0.2)
    near_threshold: int = Field(4, ge=0, le=32, description="pHash bits for near-duplicate panels")
    val_fraction: float = Field(0.15, ge=0.0, lt=0.5)
    test_fraction: float = Field(0.25, ge=0.0, lt=0.5)
    seed: int = 0
    dataset: str = "ingested"
    workers: int | None = Field(None, ge=1, description="parallel documents (default: CPUs)")


# ---------------------------------------------------------------- one document, one process


def _png(arr: np.ndarray) -> tuple[bytes, str]:
    colour = arr.ndim == 3 and (arr.max(axis=2).astype(np.int16) - arr.min(axis=2) > 24).mean() > 0.005
    img = Image.fromarray(arr if colour else arr.mean(axis=2).astype(np.uint8) if arr.ndim == 3 else arr)
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue(), img.mode


def _phash(arr: np.ndarray) -> str:
    from covidct_bench.data.images import phash_hex

    return phash_hex(Image.fromarray(arr))


def process_document(data: bytes, name: str, cfg: IngestConfig) -> dict:
    """Everything ingest learns from one PDF: ``{"doc": {...}, "panels": [...], "errors": [...]}``.

    Panel rows carry their image as PNG bytes (``png``); the caller decides where to write it.
    """
    errors = []
    try:
        doc = read_document(data, name, max_pixels=cfg.max_pixels, min_side=cfg.min_image_side)
    except DocumentError as e:
        return {"doc": {"doc": name}, "panels": [], "errors": [{"doc": name, "page": None, "xref": None,
                                                               "stage": "open", "reason": str(e)}]}
    for s in doc.skipped:
        errors.append({"doc": name, "page": s["page"], "xref": s["xref"], "stage": "image", "reason": s["reason"]})
    rows = []
    for fig in doc.figures:
        info = parse_caption(fig.caption)
        if info.label_text == "unknown" and fig.caption:  # the caption is silent: ask the sentences citing it
            info = parse_caption(fig.caption, nearby=citing_sentences(doc.text, info.figure_number, fig.caption))
        parts = sorted(fig.placements, key=lambda p: (round(p.rect[1] / 20), p.rect[0]))
        panels = []
        for k, part in enumerate(parts):
            gray = part.image.mean(axis=2).astype(np.uint8)
            boxes = split_panels(gray, min_px=cfg.min_panel_px) or [(0, 0, gray.shape[1], gray.shape[0])]
            panels += [(k, part, tuple(int(v) for v in b)) for b in boxes]
        letters = sorted({p.letter for p in info.panels})
        by_order = len(letters) == len(panels) and len(panels) > 1
        for j, (k, part, (x0, y0, x1, y1)) in enumerate(panels):
            arr = part.image[y0:y1, x0:x1]
            g = arr.mean(axis=2).astype(np.uint8)
            cx0, cy0, cx1, cy1 = chest_crop(g, margin=cfg.crop_margin)
            crop = arr[cy0:cy1, cx0:cx1]
            score = ct_score(crop, features(crop))
            is_ct = score >= cfg.ct_threshold
            keep = np.ascontiguousarray(crop if is_ct else arr)
            png, mode = _png(keep)
            letter = letters[j] if by_order else None
            label, source = info.panel_label(letter)
            if source == "caption" and info.confidence < 0.6 and label is not None:
                source = "text"  # the caption was silent; its citing sentences decided
            ptext = next((p for p in info.panels if p.letter == letter), None)
            rows.append({
                "panel_id": f"{doc.sha256[:12]}-f{fig.index:02d}-p{j:02d}", "doc": name, "doc_sha256": doc.sha256,
                "doi": doc.doi, "page": fig.page, "figure_index": fig.index, "figure_number": info.figure_number,
                "panel_index": j, "panel_letter": letter, "image_index": k, "xref": part.xref,
                "bbox": [x0, y0, x1, y1], "page_bbox": [round(v, 2) for v in part.rect],
                "crop_box": [x0 + cx0, y0 + cy0, x0 + cx1, y0 + cy1], "caption": fig.caption,
                "caption_position": fig.caption_position, "is_ct": bool(is_ct), "ct_score": round(score, 4),
                "label": label, "label_text": LABELS.get(label, info.label_text) if label is not None else info.label_text,
                "label_source": source, "label_confidence": info.confidence,
                "age": (ptext.age if ptext and ptext.age is not None else info.age),
                "sex": (ptext.sex if ptext and ptext.sex else info.sex), "illness_day": info.illness_day,
                "severity": info.severity, "width": int(keep.shape[1]), "height": int(keep.shape[0]), "mode": mode,
                "sha256": hashlib.sha256(png).hexdigest(),
                "pixel_sha256": hashlib.sha256(keep.tobytes() + str(keep.shape).encode()).hexdigest(),
                "phash": _phash(keep), "png": png,
            })
    return {"doc": {"doc": name, "doc_sha256": doc.sha256, "doi": doc.doi, "pages": doc.pages,
                    "figures": len(doc.figures)}, "panels": rows, "errors": errors}


def safe_process(data: bytes, name: str, cfg: IngestConfig) -> dict:
    """``process_document`` that reports an unexpected failure as an error row instead of raising."""
    try:
        return process_document(data, name, cfg)
    except Exception as e:  # a bug or an unexpected MuPDF failure: report it, keep going
        return {"doc": {"doc": name}, "panels": [], "errors": [{"doc": name, "page": None, "xref": None,
                                                                "stage": "process", "reason": f"{type(e).__name__}: {e}"}]}


# ---------------------------------------------------------------- isolation: a child process per worker

_HEADER = struct.Struct(">Q")


def _send(stream, obj) -> None:
    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(blob)))
    stream.write(blob)
    stream.flush()


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def worker_main(max_memory_mb: int = 0) -> None:
    """Child side: read (data, name, cfg) requests from stdin, answer with process_document results."""
    if max_memory_mb:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (max_memory_mb << 20, max_memory_mb << 20))
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    cfg_cache: dict = {}
    while True:
        head = inp.read(_HEADER.size)
        if len(head) < _HEADER.size:
            return
        data, name, cfg_json = pickle.loads(inp.read(_HEADER.unpack(head)[0]))
        cfg = cfg_cache.setdefault(cfg_json, IngestConfig.model_validate_json(cfg_json))
        _send(out, safe_process(data, name, cfg))


class IsolatedRunner:
    """Runs ``process_document`` in a long-lived child process with a time and memory limit."""

    def __init__(self, cfg: IngestConfig):
        self.cfg, self.cfg_json, self.proc = cfg, cfg.model_dump_json(), None

    def _start(self) -> None:
        # no preexec_fn: it can deadlock in a threaded parent (a Ray worker); the child limits itself
        self.proc = subprocess.Popen([sys.executable, "-c", "from covidct_bench.ingest.pipeline import worker_main;"
                                      f"worker_main({self.cfg.max_memory_mb})"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def __call__(self, data: bytes, name: str) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        deadline = time.monotonic() + self.cfg.timeout_s
        try:
            _send(self.proc.stdin, (data, name, self.cfg_json))
            fd = self.proc.stdout.fileno()
            size = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))[0]
            return pickle.loads(_read_exact(fd, size, deadline))
        except TimeoutError:
            reason = f"timed out after {self.cfg.timeout_s:g} s (per-document limit; MuPDF kept busy)"
        except (EOFError, BrokenPipeError):
            code = self.proc.wait()
            reason = (f"document worker died (exit code {code}"
                      f"{'; memory limit ' + str(self.cfg.max_memory_mb) + ' MB' if self.cfg.max_memory_mb else ''})")
        self.stop()
        return {"doc": {"doc": name}, "panels": [],
                "errors": [{"doc": name, "page": None, "xref": None, "stage": "limit", "reason": reason}]}


class IngestUDF:
    """Ray Data actor: one isolated document worker, reused for every batch it gets."""

    def __init__(self, cfg_json: str):
        self.runner = IsolatedRunner(IngestConfig.model_validate_json(cfg_json))

    def __call__(self, batch: dict) -> dict:
        results = [pickle.dumps(self.runner(bytes(data), os.path.basename(str(path))))
                   for data, path in zip(batch["bytes"], batch["path"])]
        return {"path": np.asarray([str(p) for p in batch["path"]], dtype=object),
                "result": np.asarray(results, dtype=object)}

    def __del__(self):
        self.runner.stop()


# ---------------------------------------------------------------- the corpus


def list_pdfs(pdf_dir: str | os.PathLike) -> list[Path]:
    root = Path(pdf_dir)
    if not root.is_dir():
        raise BenchError(f"{root}: not a folder of PDFs")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() == ".pdf")
    if not paths:
        raise BenchError(f"{root}: no .pdf files")
    return paths


def iter_local(paths: list[Path], cfg: IngestConfig) -> Iterable[dict]:
    """The single-process baseline: the same work, one document after another, in this process
    (no time or memory limit: use the Ray engine for untrusted corpora)."""
    for p in paths:
        yield safe_process(p.read_bytes(), p.name, cfg)


def iter_ray(paths: list[Path], cfg: IngestConfig, address: str | None = None) -> Iterable[dict]:
    """The Ray Data pipeline: read_binary_files -> map_batches(IngestUDF actors) -> streamed results."""
    import ray

    from covidct_bench.data.cache import init_ray

    init_ray(address)
    workers = cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    # reading is I/O: it takes no CPU slot, so the document actors can hold every CPU without starving it
    ds = ray.data.read_binary_files([str(p) for p in paths], include_paths=True,
                                    override_num_blocks=min(len(paths), 4 * workers), num_cpus=0)
    ds = ds.map_batches(IngestUDF, fn_constructor_kwargs={"cfg_json": cfg.model_dump_json()}, batch_size=1,
                        compute=ray.data.ActorPoolStrategy(size=min(workers, len(paths))), num_cpus=1,
                        zero_copy_batch=True)
    for row in ds.iter_rows():
        yield pickle.loads(row["result"])


def split_for(group: str, cfg: IngestConfig) -> str:
    """Deterministic split of a document group (DOI, else document hash): no paper spans two splits."""
    u = int(hashlib.sha256(f"{cfg.seed}:{group}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if u < cfg.test_fraction else "val" if u < cfg.test_fraction + cfg.val_fraction else "train"


def mark_duplicates(df: pd.DataFrame, near_threshold: int) -> pd.DataFrame:
    """``duplicate_of`` / ``duplicate_kind`` for panels that repeat an earlier one (exact bytes, or near pHash)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from covidct_bench.data.audit import hamming_pairs

    df = df.copy()
    df["duplicate_of"], df["duplicate_kind"] = None, None
    if df.empty:
        return df
    first = df.groupby("pixel_sha256")["panel_id"].transform("first")
    exact = first != df["panel_id"]
    df.loc[exact, "duplicate_of"], df.loc[exact, "duplicate_kind"] = first[exact], "exact"
    cand = df.index[(~exact) & df["is_ct"]]
    if len(cand) > 1:
        hashes = np.array([int(h, 16) for h in df.loc[cand, "phash"]], dtype=np.uint64)
        i, j, _ = hamming_pairs(hashes, near_threshold)
        if len(i):
            graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(len(cand), len(cand)))
            _, comp = connected_components(graph, directed=False)
            ids = df.loc[cand, "panel_id"].to_numpy()
            canon = pd.Series(ids).groupby(comp).transform("first").to_numpy()
            near = canon != ids
            df.loc[cand[near], "duplicate_of"], df.loc[cand[near], "duplicate_kind"] = canon[near], "near"
    return df


def to_manifest(df: pd.DataFrame, cfg: IngestConfig) -> pd.DataFrame:
    """Labelled, non-duplicate CT panels in the data layer's manifest schema."""
    keep = df[df["is_ct"] & df["label"].notna() & df["duplicate_of"].isna()]
    group = keep["doi"].fillna(keep["doc_sha256"])
    return pd.DataFrame({
        "image_id": keep["panel_id"], "dataset": cfg.dataset, "path": keep["image_path"],
        "label": keep["label"].astype("int8"), "patient_id": "doc:" + group.astype(str),
        "split": [split_for(g, cfg) for g in group], "source": keep["doi"].fillna(keep["doc"]),
        "width": keep["width"].astype("int32"), "height": keep["height"].astype("int32"), "sha256": keep["sha256"],
        "caption": keep["caption"], "age": keep["age"].astype("float32"), "sex": keep["sex"],
        "format": "PNG", "mode": keep["mode"], "phash": keep["phash"],
    }).reset_index(drop=True)


def write_tables(out: Path, panels: list[dict], errors: list[dict], cfg: IngestConfig) -> pd.DataFrame:
    """figures.parquet, errors.parquet and manifest.parquet into ``out`` (already holding the images)."""
    from covidct_bench.data.manifest import MANIFEST_FILE, write_manifest

    df = pd.DataFrame(panels, columns=[c for c in FIGURE_COLUMNS] + ["mode"])
    # results arrive in whatever order the workers finish: sort so "first occurrence" is deterministic
    df = df.sort_values(["doc", "figure_index", "panel_index"], kind="stable").reset_index(drop=True)
    df = mark_duplicates(df.drop(columns=["duplicate_of", "duplicate_kind"]), cfg.near_threshold)
    df["label"] = df["label"].astype("Int8")
    df["age"] = df["age"].astype("float64")
    df["illness_day"] = df["illness_day"].astype("Int32")
    df.to_parquet(out / "figures.parquet", index=False)
    pd.DataFrame(errors, columns=list(ERROR_COLUMNS)).astype({"page": "Int32", "xref": "Int64"}).to_parquet(
        out / "errors.parquet", index=False)
    write_manifest(to_manifest(df, cfg), out / MANIFEST_FILE)
    return df


def run_ingest(pdf_dir: str | os.PathLike, out: str | os.PathLike, cfg: IngestConfig | None = None,
               engine: str = "ray", address: str | None = None,
               progress: Callable[[int], None] | None = None) -> dict:
    """Ingest every PDF under ``pdf_dir`` into ``out`` (replaced whole, only once everything is written)."""
    from covidct_bench.io import staging_dir

    cfg = cfg or IngestConfig()
    paths = list_pdfs(pdf_dir)
    started = time.perf_counter()
    results = iter_ray(paths, cfg, address) if engine == "ray" else iter_local(paths, cfg)
    panels, errors, docs = [], [], []
    with staging_dir(out) as tmp:
        (tmp / "images").mkdir()
        for res in results:
            docs.append(res["doc"])
            errors += res["errors"]
            for row in res["panels"]:
                rel = f"images/{row['panel_id']}.png"
                (tmp / rel).write_bytes(row.pop("png"))
                row["image_path"] = rel
                panels.append(row)
            if progress:
                progress(1)
        df = write_tables(tmp, panels, errors, cfg)
        elapsed = time.perf_counter() - started
        summary = {"pdf_dir": str(pdf_dir), "engine": engine, "config": cfg.model_dump(),
                   "documents": len(paths), "documents_failed": len({e["doc"] for e in errors if e["stage"] != "image"}),
                   "figures": int(df.groupby(["doc_sha256", "figure_index"]).ngroups) if len(df) else 0,
                   "panels": len(df), "ct_panels": int(df["is_ct"].sum()) if len(df) else 0,
                   "labelled_ct_panels": int((df["is_ct"] & df["label"].notna()).sum()) if len(df) else 0,
                   "duplicates": int(df["duplicate_of"].notna().sum()) if len(df) else 0,
                   "errors": len(errors), "seconds": round(elapsed, 2)}
        (tmp / "ingest.json").write_text(json.dumps(summary, indent=1))
    return summary
