"""``covidct-bench demo``: the whole product on the embedded default, from paper PDFs to a leaderboard.

Steps, each reused when its output is already complete (so a second run, or a run after Ctrl-C,
continues where the first stopped):

1. ``corpus``  — synthetic preprint PDFs (``data.synthetic_pdfs``: phantom CT figures, single and
   multi-panel, positive / negative / unclear captions, non-CT figures) into ``<out>/pdfs``;
2. ``ingest``  — the Ray Data pipeline (``ingest.pipeline``) into ``<out>/ingest``: figures, panels,
   CT scores, labels from captions, a manifest; scored against the corpus' ground truth;
3. ``dataset`` — the manifest's audit (``<out>/audit.json``) and classical lung masks (a mask set);
4. ``grid``    — ``ablations/demo.yaml`` pointed at that dataset (``<out>/grid.yaml``), run by Ray Tune
   with one Ray Train job per trial into ``<out>/results``; interrupted trials continue from their
   checkpoints, finished ones are not run again;
5. ``report``  — the leaderboard with bootstrap intervals in the terminal, ``<out>/leaderboard.md``
   and ``<out>/report.html``.

With ``dataset="covid-ct"`` steps 1-2 become a verified fetch of COVID-CT (``--source DIR`` or the
upstream repository) into the datasets root, and the same grid runs on its official split.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from covidct_bench.errors import BenchError, Interrupted
from covidct_bench.io import atomic_path

SPEC = Path(__file__).resolve().parents[1] / "ablations" / "demo.yaml"
STATE_FILE = "demo.json"


class DemoPreset(BaseModel):
    """How big the demo is: the corpus it writes and the grid preset (image size, epochs) it trains at."""

    model_config = ConfigDict(extra="forbid")

    pdfs: int = Field(ge=4, description="synthetic PDFs in the corpus")
    panel_size: int = Field(ge=64, description="pixels per CT panel side in the PDFs")
    grid_preset: str = Field(description="preset of ablations/demo.yaml")


PRESETS = {
    "tiny": DemoPreset(pdfs=30, panel_size=128, grid_preset="tiny"),  # ~135 labelled CT panels, 32 px, 2 epochs
    "small": DemoPreset(pdfs=80, panel_size=256, grid_preset="small"),
}


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: Path = Path("demo")
    preset: Literal["tiny", "small"] = "tiny"
    dataset: Literal["synthetic", "covid-ct"] = "synthetic"
    source: str | None = Field(None, description="COVID-CT folder or URL (--dataset covid-ct; default: upstream)")
    root: Path | None = Field(None, description="datasets folder for covid-ct (default: $COVIDCT_BENCH_ROOT or ./datasets)")
    seed: int = 0

    @property
    def size(self) -> DemoPreset:
        return PRESETS[self.preset]

    @property
    def grid_name(self) -> str:
        return "demo" if self.dataset == "synthetic" else f"demo-{self.dataset}"


class Demo:
    """The demo's steps over one output folder; ``console`` is a rich Console."""

    def __init__(self, cfg: DemoConfig, console, progress_factory):
        if cfg.dataset != "covid-ct" and (cfg.source is not None or cfg.root is not None):
            raise BenchError(f"{'--source' if cfg.source is not None else '--root'}: only with --dataset covid-ct "
                             "(the synthetic demo generates its data under --out)")
        self.cfg, self.console, self.progress = cfg, console, progress_factory
        self.out = cfg.out.resolve()
        self.steps: dict[str, dict[str, Any]] = {}
        self.outputs: list[tuple[str, str]] = []
        self.current = ""

    # ------------------------------------------------------------------ helpers
    def _step(self, k: int, name: str, what: str) -> float:
        n = 4 if self.cfg.dataset == "covid-ct" else 5
        self.current = name
        self.console.rule(f"[bold][{k}/{n}] {name}[/]: {what}", align="left")
        return time.perf_counter()

    def _done(self, name: str, t0: float, reused: bool, **info) -> None:
        seconds = time.perf_counter() - t0
        self.steps[name] = {"seconds": round(seconds, 1), "reused": reused, **info}
        self.console.print(f"[green]{name}[/] {'reused' if reused else 'done'} in {seconds:.1f} s", highlight=False)

    def _rel(self, p: Path) -> str:
        try:
            return os.path.relpath(p)
        except ValueError:
            return str(p)

    # ------------------------------------------------------------------ 1. corpus
    def corpus(self) -> Path:
        from covidct_bench.data.synthetic_pdfs import SynthPdfConfig, write_corpus

        t0 = self._step(1, "corpus", f"{self.cfg.size.pdfs} synthetic preprint PDFs (phantom CT figures, captions, non-CT figures)")
        pdfs = self.out / "pdfs"
        want = SynthPdfConfig(out=pdfs, n=self.cfg.size.pdfs, seed=self.cfg.seed, panel_size=self.cfg.size.panel_size)
        truth = pdfs / "ground_truth.json"  # written last: its presence means the corpus is complete
        reused = truth.is_file() and _same(json.loads(truth.read_text()).get("config", {}), want.model_dump(mode="json"),
                                           ignore=("out", "threads"))
        if not reused:
            with self.progress() as progress:
                task = progress.add_task("writing PDFs", total=want.n)
                write_corpus(want, progress=lambda k: progress.advance(task, k))
        docs = json.loads(truth.read_text())["documents"]
        figs = [f for d in docs for f in d["figures"]]
        ct = sum(p["is_ct"] for f in figs for p in f["panels"])
        self.console.print(f"{len(docs)} PDFs, {len(figs)} figures, {ct} CT panels in the ground truth -> {self._rel(pdfs)}",
                           highlight=False)
        self.outputs.append(("PDF corpus", f"{self._rel(pdfs)}/ (doc-*.pdf, ground_truth.json)"))
        self._done("corpus", t0, reused, pdfs=len(docs), figures=len(figs))
        return pdfs

    # ------------------------------------------------------------------ 2. ingest
    def ingest(self, pdfs: Path) -> Path:
        from covidct_bench.ingest.evaluate import score_ingest
        from covidct_bench.ingest.pipeline import IngestConfig, list_pdfs, run_ingest

        t0 = self._step(2, "ingest", "Ray Data: PDFs -> figures + captions -> panels -> CT? -> chest crop -> label")
        out = self.out / "ingest"
        cfg = IngestConfig(dataset="ingested")
        summary_file = out / "ingest.json"  # the folder is replaced whole when an ingest succeeds
        old = json.loads(summary_file.read_text()) if summary_file.is_file() else None
        truth = pdfs / "ground_truth.json"
        reused = (old is not None and old.get("config") == cfg.model_dump(mode="json") and old.get("pdf_dir") == str(pdfs)
                  and old.get("corpus_mtime_ns") == truth.stat().st_mtime_ns)
        if not reused:
            with self.progress() as progress:
                task = progress.add_task("ingesting PDFs", total=len(list_pdfs(pdfs)))
                summary = run_ingest(pdfs, out, cfg, engine="ray", progress=lambda k: progress.advance(task, k))
            summary["corpus_mtime_ns"] = truth.stat().st_mtime_ns
            with atomic_path(summary_file) as tmp:
                tmp.write_text(json.dumps(summary, indent=1))
        s = json.loads(summary_file.read_text())
        self._print_ingest(out, s, score_ingest(out, truth))
        self.outputs.append(("ingest", f"{self._rel(out)}/ (figures.parquet, errors.parquet, manifest.parquet, images/)"))
        self._done("ingest", t0, reused, documents=s["documents"], ct_panels=s["ct_panels"], errors=s["errors"])
        return out

    def _print_ingest(self, out: Path, s: dict, score: dict) -> None:
        import pandas as pd
        from rich.table import Table

        figs = pd.read_parquet(out / "figures.parquet", columns=["is_ct", "label", "duplicate_of"])
        ct = figs[figs["is_ct"]]
        t = Table("documents", "failed", "figures", "panels", "CT panels", "COVID", "non-COVID", "unclear", "duplicates",
                  "error rows", title="found in the PDFs (labels from captions; COVID = 1)", show_edge=False)
        t.add_row(*map(str, (s["documents"], s["documents_failed"], s["figures"], s["panels"], s["ct_panels"],
                             int((ct["label"] == 1).sum()), int((ct["label"] == 0).sum()), int(ct["label"].isna().sum()),
                             s["duplicates"], s["errors"])))
        self.console.print(t)

        def pct(x):
            return "-" if x is None or x != x else f"{100 * x:.0f}%"

        self.console.print(f"against the corpus' ground truth: figures found {pct(score['figure_recall'])}, "
                           f"CT detection precision {pct(score['ct_precision'])} / recall {pct(score['ct_recall'])}, "
                           f"label accuracy {pct(score['label_accuracy'])} on {pct(score['label_coverage'])} of labelled CT "
                           f"panels, version-2 duplicates caught {pct(score['duplicate_recall'])}", highlight=False)

    # ------------------------------------------------------------------ 2'. covid-ct
    def fetch(self) -> Path:
        from covidct_bench.data import get_dataset

        where = self.cfg.source or "the upstream repository"
        t0 = self._step(1, "fetch", f"COVID-CT from {where}, verified (a verified copy is reused)")
        with self.progress() as progress:
            res = get_dataset("covid-ct").fetch(root=self.cfg.root, source=self.cfg.source, progress=progress)
        self.console.print(f"covid-ct: {res.images} images in {self._rel(res.path)} (official patient-level split)",
                           highlight=False)
        self.outputs.append(("dataset", f"{self._rel(res.path)}/ (manifest.parquet, fetch.json)"))
        self._done("fetch", t0, res.reused, images=res.images)
        return res.path

    # ------------------------------------------------------------------ 3. audit + lung masks
    def dataset(self, folder: Path, k: int) -> None:
        from covidct_bench.data.audit import audit_manifest, audit_tables
        from covidct_bench.data.lung_masks import classical_masks, set_dir, write_mask_set
        from covidct_bench.data.manifest import read_manifest

        t0 = self._step(k, "dataset", "manifest audit (balance, leakage, duplicates) and classical lung masks")
        df = read_manifest(folder)
        audit = audit_manifest(df)
        with atomic_path(self.out / "audit.json") as tmp:
            tmp.write_text(json.dumps(audit, indent=1, default=str))
        for part in audit_tables(audit, brief=True):
            self.console.print(part, highlight=False)
        masks = set_dir(df, "classical")
        reused = (masks / "index.parquet").is_file()
        if not reused:
            with self.progress() as progress:
                task = progress.add_task("lung masks (classical)", total=len(df))
                write_mask_set(df, "classical", classical_masks(df), {"method": "classical", "made_by": "demo"},
                               progress=lambda n: progress.advance(task, n))
        self.console.print(f"lung masks: {len(df)} in {self._rel(masks)} (scikit-image thresholding + morphology)",
                           highlight=False)
        self.outputs += [("manifest", self._rel(folder / "manifest.parquet")), ("audit", self._rel(self.out / "audit.json")),
                         ("lung masks", f"{self._rel(masks)}/")]
        self._done("dataset", t0, reused, images=len(df))

    # ------------------------------------------------------------------ 4. grid
    def grid_spec(self, dataset: str) -> Path:
        """``ablations/demo.yaml`` pointed at the dataset, as ``<out>/grid.yaml`` (rewritten only when it changes)."""
        try:
            spec = yaml.safe_load(SPEC.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise BenchError(f"{SPEC}: cannot read the demo's grid spec ({e})") from None
        spec["name"] = self.cfg.grid_name
        spec["fixed"] = {**spec.get("fixed", {}), "dataset": dataset}
        if self.cfg.dataset == "covid-ct":  # absolute, so `grid run <out>/grid.yaml` works from any folder
            from covidct_bench.data.manifest import default_root

            spec["fixed"]["root"] = str(Path(self.cfg.root or default_root()).resolve())
        text = f"# written by covidct-bench demo from {SPEC.name}; run it again with grid run\n" + yaml.safe_dump(spec, sort_keys=False)
        path = self.out / "grid.yaml"
        if not path.is_file() or path.read_text() != text:
            with atomic_path(path) as tmp:
                tmp.write_text(text)
        return path

    def grid(self, spec_path: Path, k: int) -> Path:
        from covidct_bench.tune.grid import run_grid
        from covidct_bench.tune.spec import load_spec

        spec = load_spec(spec_path, self.cfg.size.grid_preset)
        t0 = self._step(k, "grid", f"{' x '.join(f'{len(v)} {a}' for a, v in spec.axes.items())} x {len(spec.seeds)} seeds "
                                   f"(preset {self.cfg.size.grid_preset}): Ray Tune trials, each a Ray Train job")
        results = self.out / "results"
        outcome = run_grid(spec_path, preset=self.cfg.size.grid_preset, results=str(results), resume=True,
                           console=self.console)
        if outcome.failed:
            raise BenchError(f"{len(outcome.failed)} grid trial(s) failed, first: {outcome.failed[0]} (rows kept in "
                             f"{outcome.grid_dir}; rerun the demo to retry them)")
        self.outputs += [("grid spec", self._rel(spec_path)),
                         ("results", f"{self._rel(results / spec.name)}/ (rows/*.parquet, predictions/, runs/)")]
        self._done("grid", t0, outcome.ran == 0, trials=len(spec.cells()) * len(spec.seeds), ran=outcome.ran,
                   skipped=outcome.skipped)
        return results

    # ------------------------------------------------------------------ 5. report
    def report(self, results: Path, k: int) -> None:
        from covidct_bench.report import html, render
        from covidct_bench.report.leaderboard import build

        t0 = self._step(k, "report", "leaderboard: mean over seeds, patient-bootstrap 95% intervals, paper rows")
        lb = build([str(results)], grid=self.cfg.grid_name)
        render.terminal(lb, self.console)
        md = self.out / "leaderboard.md"
        with atomic_path(md) as tmp:
            tmp.write_text(render.markdown(lb))
        page = html.write(lb, self.out / "report.html", command=self.command())
        self.outputs += [("leaderboard", self._rel(md)), ("HTML report", f"{self._rel(Path(str(page)))} (no network needed)")]
        self._done("report", t0, False, rows=int((lb.table["kind"] == "ours").sum()))

    # ------------------------------------------------------------------ all
    def command(self) -> str:
        c = self.cfg
        parts = ["covidct-bench", "demo", "--out", self._rel(self.out), "--preset", c.preset]
        if c.dataset != "synthetic":
            parts += ["--dataset", c.dataset] + (["--source", c.source] if c.source else [])
        return shlex.join(parts)

    def run(self) -> dict:
        try:
            return self._run()
        except KeyboardInterrupt:  # Ctrl-C: what finished is kept (each step publishes whole, trials checkpoint)
            done = ", ".join(self.steps) or "none"
            raise Interrupted(f"demo stopped in step {self.current or 'start'} (steps done: {done}; finished grid trials "
                              f"are kept); run `{self.command()}` again to continue") from None

    def _run(self) -> dict:
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        _start_ray()
        if self.cfg.dataset == "synthetic":
            folder = self.ingest(self.corpus())
            self.dataset(folder, 3)
            spec = self.grid_spec(str(folder))
            k = 4
        else:
            folder = self.fetch()
            self.dataset(folder, 2)
            spec = self.grid_spec("covid-ct")
            k = 3
        results = self.grid(spec, k)
        self.report(results, k + 1)
        total = time.perf_counter() - t0
        state = {"command": self.command(), "config": self.cfg.model_dump(mode="json"), "seconds": round(total, 1),
                 "steps": self.steps, "outputs": dict(self.outputs)}
        with atomic_path(self.out / STATE_FILE) as tmp:
            tmp.write_text(json.dumps(state, indent=1))
        self._summary(total, spec)
        return state

    def _summary(self, total: float, spec: Path) -> None:
        from rich.table import Table

        self.console.rule(f"[bold green]demo done[/] in {total / 60:.1f} min", align="left")
        t = Table("output", "where", show_edge=False, title="outputs")
        for name, where in self.outputs:
            t.add_row(name, where)
        self.console.print(t)
        res = self._rel(self.out / "results")
        nxt = [("this grid again / bigger", f"covidct-bench grid run {self._rel(spec)} --preset small --results {res}"),
               ("its leaderboard", f"covidct-bench leaderboard {res} --format md"),
               ("real data", "covidct-bench demo --dataset covid-ct --source ../shared/data/covid-ct   "
                             "(or: covidct-bench data fetch covid-ct)"),
               ("a paper table", "covidct-bench grid run ablations/paper_table5.yaml --preset cpu && "
                                 "covidct-bench leaderboard --grid paper_table5"),
               ("a cluster", "covidct-bench cluster up && covidct-bench cluster submit -- grid run "
                             "ablations/paper_table5.yaml --preset paper --results s3://BUCKET/results"),
               ("a cluster on this machine", "covidct-bench cluster local up --nodes 2 (README: Trying the cluster path)")]
        n = Table("next", "command", show_edge=False, title="try next")
        for what, cmd in nxt:
            n.add_row(what, cmd)
        self.console.print(n)


def _same(a: dict, b: dict, ignore: tuple[str, ...] = ()) -> bool:
    return {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}


def _start_ray() -> None:
    """One local Ray for every step (ingest, caches, grid), with the grid's trial-driver resource, so it
    starts once; or the cluster at $RAY_ADDRESS."""
    from covidct_bench.data.cache import init_ray
    from covidct_bench.tune.grid import TRIAL_RESOURCE

    address = os.environ.get("RAY_ADDRESS")
    init_ray(address, resources=None if address else {TRIAL_RESOURCE: 64})


def run_demo(cfg: DemoConfig, console, progress_factory) -> dict:
    return Demo(cfg, console, progress_factory).run()
