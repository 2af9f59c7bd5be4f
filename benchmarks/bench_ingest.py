"""Ingest throughput: the Ray Data pipeline vs a single-process loop over the same synthetic corpus.

    python3 benchmarks/bench_ingest.py --n 200 --panel-size 512

Both engines do the same per-document work (``process_document``) and write the same outputs;
the Ray run includes starting the actors and their isolated document workers (Ray itself is
started before the clock). Prints PDFs/s and panels/s for each and the speed-up ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from covidct_bench.data.synthetic_pdfs import SynthPdfConfig, write_corpus
from covidct_bench.ingest.pipeline import IngestConfig, run_ingest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--panel-size", type=int, default=512)
    ap.add_argument("--corpus", type=Path, default=None, help="reuse (or create) this corpus folder")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()

    corpus = args.corpus or Path(tempfile.mkdtemp(prefix="bench-corpus-"))
    if not (corpus / "ground_truth.json").is_file():
        t = time.perf_counter()
        write_corpus(SynthPdfConfig(out=corpus, n=args.n, seed=0, panel_size=args.panel_size, render_size=192))
        print(f"corpus: {args.n} PDFs written in {time.perf_counter() - t:.1f} s -> {corpus}")
    pdfs = sorted(corpus.glob("*.pdf"))
    size_mb = sum(p.stat().st_size for p in pdfs) / 2**20
    truth = json.loads((corpus / "ground_truth.json").read_text())
    pages = sum(d["pages"] for d in truth["documents"])
    print(f"corpus: {len(pdfs)} PDFs, {pages} pages, {size_mb:.0f} MiB")

    from covidct_bench.data.cache import init_ray

    init_ray()
    cfg = IngestConfig(workers=args.workers)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("local", "ray"):
            t = time.perf_counter()
            s = run_ingest(corpus, Path(tmp) / engine, cfg, engine=engine)
            dt = time.perf_counter() - t
            results[engine] = (dt, s["panels"])
            print(f"{engine:>5}: {dt:7.1f} s  {len(pdfs) / dt:6.2f} PDFs/s  {s['panels'] / dt:7.1f} panels/s "
                  f"({s['panels']} panels, {s['errors']} errors)")
    ratio = results["local"][0] / results["ray"][0]
    print(f"speed-up ray/local: {ratio:.2f}x (target >= 1.7x on 2 cores)")


if __name__ == "__main__":
    main()
