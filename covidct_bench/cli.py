"""The ``covidct-bench`` command line: parse, call one library function, print with rich."""

from __future__ import annotations

import functools
import io
import json
import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from covidct_bench import __version__
from covidct_bench.errors import BenchError, first_invalid

console = Console()
err_console = Console(stderr=True)


class App(typer.Typer):
    """A Typer whose commands turn BenchError / config errors into one line and exit status 1."""

    def command(self, *args, **kwargs) -> Callable:
        register = super().command(*args, **kwargs)

        def deco(fn: Callable) -> Callable:
            @functools.wraps(fn)
            def run(*a, **kw):
                try:
                    return fn(*a, **kw)
                except BenchError as e:  # messages name files and options: [brackets] are text, not markup
                    err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
                    raise typer.Exit(1) from None
                except ValidationError as e:
                    key, msg = first_invalid(e)
                    text = escape(f"{key or 'value'}: {msg}")
                    err_console.print(f"[bold red]error:[/] {text}", highlight=False, soft_wrap=True)
                    raise typer.Exit(1) from None
                except KeyboardInterrupt as e:
                    what = str(e) or "nothing half-written was kept"
                    err_console.print(f"[yellow]interrupted:[/] {escape(what)}", highlight=False, soft_wrap=True)
                    raise typer.Exit(130) from None

            return register(run)

        return deco


app = App(name="covidct-bench", help="COVID-CT as a reproducible, distributed benchmark (COVID = positive class).",
          no_args_is_help=True, rich_markup_mode="rich")
data_app = App(help="Datasets: fetch, synthesise, audit, cache.", no_args_is_help=True)
app.add_typer(data_app, name="data")
ingest_app = App(help="Ingest: paper PDFs -> figures -> labelled CT panels (Ray Data), review.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
train_app = App(help="Train on Ray Train: classify, multitask, segment (lung U-Net), cssl (MoCo v2).", no_args_is_help=True)
app.add_typer(train_app, name="train")
grid_app = App(help="Ablation grids (ablations/*.yaml) on Ray Tune + Optuna + Ray Train; results as Parquet.", no_args_is_help=True)
app.add_typer(grid_app, name="grid")
cluster_app = App(help="Ray clusters: cluster.yaml through Ray's launcher (up/down/status/dashboard), jobs (submit), "
                       "and a multi-node cluster on this machine (local).", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
local_app = App(help="A real multi-node Ray cluster on this machine (loopback, token auth), to try the cluster path.",
                no_args_is_help=True)
cluster_app.add_typer(local_app, name="local")

RootOpt = typer.Option(None, "--root", help="Datasets folder (default: $COVIDCT_BENCH_ROOT or ./datasets).")


@app.callback(invoke_without_command=True)
def _main(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        console.print(f"covidct-bench {__version__}")
        raise typer.Exit()


def _progress():
    from covidct_bench.data.fetch import make_progress

    return make_progress(console=err_console, transient=False)


@data_app.command("list")
def data_list() -> None:
    """List the registered datasets."""
    from covidct_bench.data import DATASETS

    table = Table("name", "source", "description")
    for name in DATASETS:
        ds = DATASETS.get(name)
        where = "generated locally" if name == "synthetic" else (ds.default_source or "--source DIR")
        table.add_row(name, where, ds.description)
    console.print(table)


@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="Dataset name (see `data list`)."),
    source: Optional[str] = typer.Option(None, "--source", help="URL (https://, file://) or folder in the upstream layout."),
    root: Optional[Path] = RootOpt,
    force: bool = typer.Option(False, "--force", help="Fetch again even if a verified copy is there."),
) -> None:
    """Download (or copy), verify and build the manifest of a dataset. A second fetch is a verified no-op."""
    from covidct_bench.data import get_dataset

    ds = get_dataset(name)
    with _progress() as progress:
        res = ds.fetch(root=root, source=source, force=force, progress=progress)
    verb = "already there, verified" if res.reused else "fetched and verified"
    console.print(f"[green]{name}[/]: {res.images} images {verb} in {res.path} (manifest: {res.path / 'manifest.parquet'})")


@data_app.command("synth")
def data_synth(
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: <root>/synthetic)."),
    n: int = typer.Option(120, "--n", help="Number of images."),
    seed: int = typer.Option(0, "--seed"),
    size: int = typer.Option(256, "--size", help="Slice size in pixels."),
    slices_per_patient: int = typer.Option(4, "--slices-per-patient"),
    style: str = typer.Option("clean", "--style", help="clean, or paper (JPEG, downscale, margins, arrows, letters)."),
    root: Optional[Path] = RootOpt,
    force: bool = typer.Option(False, "--force"),
) -> None:
    """Generate synthetic chest-CT phantoms with lung and lesion masks (deterministic for a seed)."""
    from covidct_bench.data import get_dataset
    from covidct_bench.data.synthetic import SynthConfig

    cfg = SynthConfig(n=n, seed=seed, size=size, slices_per_patient=slices_per_patient, style=style)  # validate first
    with _progress() as progress:
        res = get_dataset("synthetic").fetch(root=root, out=out, force=force, progress=progress, **cfg.model_dump())
    verb = "already there, verified" if res.reused else "generated"
    console.print(f"[green]synthetic[/]: {res.images} images {verb} in {res.path}")


@data_app.command("audit")
def data_audit(
    name: str = typer.Argument(..., help="Dataset name, or a folder holding manifest.parquet."),
    root: Optional[Path] = RootOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    threshold: int = typer.Option(4, "--near-threshold", min=0, max=32, help="pHash Hamming distance for near-duplicates."),
) -> None:
    """Counts per split and class, patient leakage, exact / near duplicates, image sizes."""
    from covidct_bench.data import load_manifest
    from covidct_bench.data.audit import audit_manifest

    result = audit_manifest(load_manifest(name, root), near_threshold=threshold)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        from covidct_bench.data.audit import audit_tables

        for part in audit_tables(result):
            console.print(part, highlight=False)


@data_app.command("cache")
def data_cache(
    name: str = typer.Argument(..., help="Dataset name, or a folder holding manifest.parquet."),
    root: Optional[Path] = RootOpt,
    size: int = typer.Option(480, "--size", help="Cached image size (square)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Cache folder (default: <dataset>/cache/<size>)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: local / $RAY_ADDRESS)."),
) -> None:
    """Decode and resize every image once with a Ray Data job, for fast epochs."""
    from covidct_bench.data import load_manifest
    from covidct_bench.data.cache import build_cache

    df = load_manifest(name, root)
    with _progress() as progress:
        cache = build_cache(df, size=size, out=out, address=address, progress=progress)
    console.print(f"[green]cache[/]: {len(cache)} images at {size}x{size} in {cache.path}")


@data_app.command("synth-pdfs")
def data_synth_pdfs(
    out: Path = typer.Option(..., "--out", help="Folder for doc-NNNN.pdf and ground_truth.json."),
    n: int = typer.Option(20, "--n", help="Number of PDFs."),
    seed: int = typer.Option(0, "--seed"),
    panel_size: int = typer.Option(384, "--panel-size", help="Pixels per CT panel side (multi-panel figures are larger)."),
    duplicate_fraction: float = typer.Option(0.1, "--duplicate-fraction", help="Share of documents that are a v2 of another."),
) -> None:
    """Write a synthetic corpus of preprint PDFs (CT and non-CT figures, captions) with its ground truth."""
    from covidct_bench.data.synthetic_pdfs import SynthPdfConfig, write_corpus

    cfg = SynthPdfConfig(out=out, n=n, seed=seed, panel_size=panel_size, duplicate_fraction=duplicate_fraction)
    with _progress() as progress:
        task = progress.add_task("writing PDFs", total=n)
        truth = write_corpus(cfg, progress=lambda k: progress.advance(task, k))
    figs = sum(len(d["figures"]) for d in truth["documents"])
    console.print(f"[green]synth-pdfs[/]: {n} PDFs, {figs} figures in {out} (ground truth: {out / 'ground_truth.json'})")


@ingest_app.command("run")
def ingest_run(
    pdf_dir: Path = typer.Argument(..., help="Folder of PDFs (searched recursively)."),
    out: Path = typer.Option(..., "--out", help="Output folder (replaced whole when the run succeeds)."),
    ct_threshold: float = typer.Option(0.5, "--ct-threshold", help="ct_score at or above which a panel is a CT."),
    timeout: float = typer.Option(120.0, "--timeout", help="Per-document time limit in seconds."),
    max_pixels: int = typer.Option(50_000_000, "--max-pixels", help="Largest embedded image decoded (w x h)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Documents in parallel (default: CPUs)."),
    dataset: str = typer.Option("ingested", "--dataset", help="Dataset name written into the manifest."),
    engine: str = typer.Option("ray", "--engine", help="ray (Ray Data, isolated workers) or local (one process)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: local / $RAY_ADDRESS)."),
) -> None:
    """Figures, captions, panels, CT scores, chest crops and labels from a folder of PDFs."""
    from covidct_bench.ingest.pipeline import IngestConfig, list_pdfs, run_ingest

    if engine not in ("ray", "local"):
        raise BenchError(f"--engine: {engine!r} is not ray or local")
    cfg = IngestConfig(ct_threshold=ct_threshold, timeout_s=timeout, max_pixels=max_pixels, workers=workers,
                       dataset=dataset)
    total = len(list_pdfs(pdf_dir))
    with _progress() as progress:
        task = progress.add_task("ingesting PDFs", total=total)
        s = run_ingest(pdf_dir, out, cfg, engine=engine, address=address, progress=lambda k: progress.advance(task, k))
    console.print(f"[green]ingest[/]: {s['documents']} PDFs ({s['documents_failed']} failed), {s['figures']} figures, "
                  f"{s['panels']} panels, {s['ct_panels']} CT ({s['labelled_ct_panels']} labelled), "
                  f"{s['duplicates']} duplicates, {s['errors']} error rows in {s['seconds']:.1f} s -> {out}")


@ingest_app.command("review")
def ingest_review(out: Path = typer.Argument(..., help="An ingest output folder.")) -> None:
    """Write review.html (gallery) and review.csv (edit is_ct / label there)."""
    from covidct_bench.ingest.review import write_review

    page, csv = write_review(out)
    console.print(f"[green]review[/]: open {page}; edit {csv}, then `covidct-bench ingest apply-review {out} {csv}`")


@ingest_app.command("apply-review")
def ingest_apply_review(out: Path = typer.Argument(..., help="An ingest output folder."),
                        csv: Path = typer.Argument(..., help="The edited review CSV.")) -> None:
    """Apply a reviewed CSV to figures.parquet and the manifest."""
    from covidct_bench.ingest.review import apply_review

    r = apply_review(out, csv)
    console.print(f"[green]apply-review[/]: {r['label']} labels and {r['is_ct']} CT flags changed; "
                  f"manifest has {r['manifest_rows']} images")


@ingest_app.command("score-captions")
def ingest_score_captions(
    csv: Path = typer.Argument(..., help="COVID-CT-MetaInfo.csv (captions with curated age and sex)."),
) -> None:
    """Accuracy and coverage of the caption parser against curated metadata (JSON)."""
    from covidct_bench.ingest.captions import score_metadata

    if not csv.is_file():
        raise BenchError(f"{csv}: not found")
    typer.echo(json.dumps(score_metadata(csv), indent=1))


@data_app.command("lung-masks")
def data_lung_masks(
    name: str = typer.Argument(..., help="Dataset name, or a folder holding manifest.parquet."),
    root: Optional[Path] = RootOpt,
    method: str = typer.Option("classical", "--method", help="classical (scikit-image) or unet (needs --run)."),
    run: Optional[Path] = typer.Option(None, "--run", help="A `train segment` run folder (for --method unet)."),
    set_name: Optional[str] = typer.Option(None, "--set", help="Mask-set name (default: the method)."),
) -> None:
    """Make lung masks for every image of a manifest, as a named mask set (--lung-masks SET when training)."""
    from covidct_bench.data import load_manifest
    from covidct_bench.data.images import load_mask
    from covidct_bench.data.lung_masks import classical_masks, write_mask_set
    from covidct_bench.data.manifest import absolute
    from covidct_bench.metrics import dice_iou

    df = load_manifest(name, root)
    if method == "classical":
        masks, meta = classical_masks(df), {"method": "classical"}
    elif method == "unet":
        if run is None:
            raise BenchError("--method unet needs --run RUN_DIR (a `train segment` run)")
        from covidct_bench.train.predict import unet_lung_masks

        masks, meta = unet_lung_masks(df, run), {"method": "unet", "run": str(run.resolve())}
    else:
        raise BenchError(f"--method: {method!r} is not classical or unet")
    set_name = set_name or method
    dice = []
    own = list(df["lung_mask_path"]) if "lung_mask_path" in df else None
    own_abs = list(absolute(df, "lung_mask_path")) if own is not None else None

    def scored(it):
        for i, m in enumerate(it):
            if own is not None and isinstance(own[i], str):
                t = load_mask(own_abs[i], own[i]) > 0
                if t.shape == m.shape:
                    dice.append(float(dice_iou(m[None], t[None])[0][0]))
            yield m

    with _progress() as progress:
        task = progress.add_task(f"lung masks ({method})", total=len(df))
        out = write_mask_set(df, set_name, scored(masks), meta, progress=lambda n: progress.advance(task, n))
    console.print(f"[green]mask set[/] {set_name!r}: {len(df)} masks in {out}")
    if dice:
        console.print(f"Dice against the manifest's own lung masks: mean {sum(dice) / len(dice):.3f} over {len(dice)} images")


def _epoch_table(rows: list[dict], epochs: int) -> Table:
    keys = ["train/loss", "train/images_per_s"]
    for split in ("val", "test"):
        for m in ("accuracy", "f1", "auc", "lesion_dice", "dice", "true_dice", "knn_acc", "linear_acc"):
            if any(f"{split}/{m}" in r for r in rows):
                keys.append(f"{split}/{m}")
    table = Table(title=f"epochs ({len(rows)}/{epochs})", show_lines=False)
    table.add_column("epoch", justify="right")
    for k in keys:
        label = k.replace("train/", "").replace("images_per_s", "img/s").replace("accuracy", "acc").replace("true_dice", "true dice")
        table.add_column(label.replace("/", " "), justify="right")
    for r in rows:
        table.add_row(str(int(r["epoch"])), *[(f"{r[k]:.3f}" if k in r and r[k] == r[k] else "-") for k in keys])
    return table


def _train(task: str, config: Optional[Path], overrides: dict, out: Optional[str], resume: bool, address: Optional[str]) -> None:
    import datetime as _dt

    from rich.live import Live

    from covidct_bench.train.config import load_config
    from covidct_bench.train.runner import run_training

    cfg = load_config(config, {**overrides, "task": task})
    if out is None:
        out = str(Path("runs") / f"{task}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")
    rows: list[dict] = []
    live: list[Live] = []  # started with the first epoch, so an early error prints one line only

    def on_epoch(m: dict) -> None:
        rows.append(m)
        if not live:
            live.append(Live(console=console, refresh_per_second=2, transient=False))
            live[0].start()
        live[0].update(_epoch_table(rows, cfg.epochs))

    try:
        with _progress() as progress:
            result = run_training(cfg, out, resume=resume, address=address, on_epoch=on_epoch, progress=progress)
    finally:
        if live:
            live[0].stop()
    s = result.summary
    sel = s.get("selected_epoch")
    console.print(f"[green]run[/] {result.path}: {len(result.metrics['epoch'].unique())} epochs in {s['wall_s']:.0f} s "
                  f"({s.get('train_images_per_s', float('nan')):.1f} train img/s); validation picks epoch {sel} "
                  f"by {s.get('select_metric', '-')}")
    test = s.get("selected", {}).get("test", {})
    if test:
        console.print("test at that epoch: " + ", ".join(f"{k} {v:.3f}" for k, v in test.items() if k != "threshold"))


def _make_train_command(task: str, doc: str) -> None:
    @train_app.command(task, help=doc)
    def command(
        config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON TrainConfig; flags override it."),
        dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset name or manifest folder (default synthetic)."),
        root: Optional[Path] = RootOpt,
        backbone: Optional[str] = typer.Option(None, "--backbone", help="torchvision model name (default densenet169)."),
        image_size: Optional[int] = typer.Option(None, "--image-size", help="Square input size (task default)."),
        epochs: Optional[int] = typer.Option(None, "--epochs"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch (split over workers)."),
        lr: Optional[float] = typer.Option(None, "--lr"),
        init: Optional[str] = typer.Option(None, "--init", help="random | imagenet | cssl:RUN_DIR (default imagenet)."),
        weights: Optional[Path] = typer.Option(None, "--weights", help="Offline ImageNet state dict for --init imagenet."),
        mask_mode: Optional[str] = typer.Option(None, "--mask-mode", help="none | channel | multiply (lung mask)."),
        lung_masks: Optional[str] = typer.Option(None, "--lung-masks", help="Lung mask set: manifest, classical, unet, ..."),
        workers: Optional[int] = typer.Option(None, "--workers", help="Ray Train workers (DDP)."),
        gpu: Optional[bool] = typer.Option(None, "--gpu/--cpu", help="One GPU per worker."),
        seed: Optional[int] = typer.Option(None, "--seed"),
        loader_workers: Optional[int] = typer.Option(None, "--loader-workers", help="DataLoader processes per worker."),
        out: Optional[str] = typer.Option(None, "--out", help="Run folder or storage URI (s3://, gs://, file://; on a "
                                          "cluster one every node reaches) [default: runs/<task>-<time>]."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
        address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: local / $RAY_ADDRESS)."),
    ) -> None:
        overrides = {"dataset": dataset, "root": str(root) if root else None, "backbone": backbone, "image_size": image_size,
                     "epochs": epochs, "batch_size": batch_size, "lr": lr, "init": init,
                     "weights": str(weights) if weights else None, "mask_mode": mask_mode, "lung_masks": lung_masks,
                     "workers": workers, "gpu": gpu, "seed": seed, "loader_workers": loader_workers}
        _train(task, config, overrides, out, resume, address)


for _task, _doc in (("classify", "COVID vs non-COVID classifier (paper: DenseNet-169, 480 px, Adam 1e-4, batch 16)."),
                    ("multitask", "Classifier + ASPP lesion-segmentation head; the predicted lesion mask feeds the classifier."),
                    ("segment", "Residual U-Net lung segmenter (trains on a lung mask set, e.g. classical)."),
                    ("cssl", "MoCo v2 self-supervised pretraining (queue 512, SGD 0.015); fine-tune with --init cssl:RUN.")):
    _make_train_command(_task, _doc)


SpecArg = typer.Argument(..., help="Grid spec (ablations/*.yaml).")
PresetOpt = typer.Option(None, "--preset", help="Scale image size / epochs: a preset of the spec (smoke, cpu, paper).")
ResultsOpt = typer.Option("results", "--results", help="Results folder or storage URI (s3://bucket/results, gs://..., "
                                                      "file://...); the grid writes <results>/<grid>/.")


@grid_app.command("run")
def grid_run(
    spec: Path = SpecArg,
    preset: Optional[str] = PresetOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue interrupted trials from their last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Rerun trials whose config hash already has a finished result."),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", min=1, help="At most K trials at once."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: local / $RAY_ADDRESS)."),
    results: str = ResultsOpt,
) -> None:
    """Run a grid: [CSSL pretraining], [Optuna search per cell on validation], every cell x seed on test."""
    from covidct_bench.tune.grid import run_grid

    out = run_grid(spec, preset=preset, results=results, resume=resume, force=force, max_concurrent=max_concurrent,
                   address=address, console=console)
    from covidct_bench.tune.grid import status_table

    console.print(status_table(spec, preset, results))
    if out.failed:
        raise BenchError(f"{len(out.failed)} trial(s) failed, first: {out.failed[0]} (rows kept in {out.grid_dir}/rows; "
                         "rerun the same command to retry them)")
    console.print(f"[green]grid done[/]: {out.ran} trial(s) ran, {out.skipped} already finished; results in {out.grid_dir}")


@grid_app.command("status")
def grid_status_cmd(
    spec: Path = SpecArg,
    preset: Optional[str] = PresetOpt,
    results: str = ResultsOpt,
    show_all: bool = typer.Option(False, "--all", help="One line per trial."),
) -> None:
    """Cells done / running / failed / interrupted / pending, from the results dataset."""
    from covidct_bench.tune.grid import grid_status, status_table

    console.print(status_table(spec, preset, results))
    if show_all:
        df = grid_status(spec, preset, results)
        table = Table(show_edge=False)
        for col in df.columns:
            table.add_column(col)
        for row in df.itertuples(index=False):
            table.add_row(*map(str, row))
        console.print(table)


@grid_app.command("cost")
def grid_cost(
    results: Optional[list[str]] = typer.Argument(None, help="Results folders or URIs [default: results]."),
    price: float = typer.Option(..., "--price-per-gpu-hour", min=0, help="What one GPU-hour costs you (e.g. 1.006: a "
                                "g5.xlarge on demand in us-east-1 when this was written; spot is lower)."),
    grid: Optional[str] = typer.Option(None, "--grid", help="Only this grid."),
) -> None:
    """GPU-hours the grids used (stored per trial: GPUs x Train wall time) x your price, with CSSL pretraining."""
    from covidct_bench.report.cost import grid_costs

    df = grid_costs(results or ["results"], price, grid)
    table = Table(title=f"GPU cost at {price:g} per GPU-hour", show_edge=False)
    for col in ("grid", "trials", "failed attempts", "train hours", "GPU-hours", "cost"):
        table.add_column(col, justify="left" if col == "grid" else "right")
    for r in df.itertuples(index=False):
        table.add_row(r.grid, str(int(r.trials)), str(int(r.failed_attempts)), f"{r.train_hours:.2f}", f"{r.gpu_hours:.2f}",
                      f"{r.cost:.2f}", style="bold" if r.grid == "total" else None)
    console.print(table)
    if not df["gpu_hours"].iloc[-1]:
        console.print("no GPU time in these results (CPU trials): train hours are the wall time of their Train runs")


# --------------------------------------------------------------------------------------------- cluster
ConfigArg = typer.Argument(Path("cluster.yaml"), help="Cluster-launcher config [default: cluster.yaml].")


@cluster_app.command("up")
def cluster_up(config: Path = ConfigArg, yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask to confirm."),
               restart: bool = typer.Option(True, "--restart/--no-restart", help="Restart Ray on nodes that run it.")) -> None:
    """Start or update the cluster (`ray up`): checks the cloud SDK and the auth token the nodes share first."""
    from covidct_bench.cluster import launcher as L

    L.check_sdk(L.load_config(config), config)
    token, made = L.ensure_token()
    err_console.print(f"auth token: {token}{' (generated now)' if made else ''}; cluster.yaml mounts it on every node")
    raise typer.Exit(L.run(L.up_command(config, yes, restart)))


@cluster_app.command("down")
def cluster_down(config: Path = ConfigArg, yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask to confirm.")) -> None:
    """Stop the cluster and terminate its nodes (`ray down`)."""
    from covidct_bench.cluster import launcher as L

    L.check_sdk(L.load_config(config), config)
    raise typer.Exit(L.run(L.down_command(config, yes)))


@cluster_app.command("status")
def cluster_status(config: Optional[Path] = typer.Argument(None, help="Cluster-launcher config (runs `ray status` on its head)."),
                   address: Optional[str] = typer.Option(None, "--address", help="A running cluster's address "
                                                         "(default: $RAY_ADDRESS) instead of a config.")) -> None:
    """Nodes, resources and pending demands (`ray status`)."""
    from covidct_bench.cluster import launcher as L

    if config is not None:
        L.load_config(config)
    raise typer.Exit(L.run(L.status_command(config, address)))


@cluster_app.command("dashboard")
def cluster_dashboard(config: Path = ConfigArg) -> None:
    """Forward the head's dashboard and jobs API (bound to its 127.0.0.1) to 127.0.0.1:8265 here (`ray dashboard`)."""
    from covidct_bench.cluster import launcher as L

    L.load_config(config)
    raise typer.Exit(L.run(L.dashboard_command(config)))


@cluster_app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def cluster_submit(
    ctx: typer.Context,
    address: Optional[str] = typer.Option(None, "--address", help=f"Jobs API or cluster address (default: $RAY_ADDRESS, "
                                          f"else {'http://127.0.0.1:8265'}, where `cluster dashboard` forwards it)."),
    working_dir: Path = typer.Option(Path("."), "--working-dir", help="Uploaded as the job's working directory (the repository)."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Return once submitted instead of following the job's logs."),
) -> None:
    """Run a covidct-bench command on the cluster as a Ray job: cluster submit -- grid run SPEC --results s3://B/results"""
    from covidct_bench.cluster import launcher as L

    raise typer.Exit(L.run(L.submit_command(list(ctx.args), address, working_dir, no_wait)))


LocalDirOpt = typer.Option(Path(".ray-local"), "--dir", help="The local cluster's folder (state, token, logs).")


@local_app.command("up")
def cluster_local_up(nodes: int = typer.Option(2, "--nodes", min=1, help="Ray nodes, the head included."),
                     cpus: float = typer.Option(1, "--cpus", min=0, help="CPUs each node offers to Train workers."),
                     gpus: float = typer.Option(0, "--gpus", min=0, help="GPUs each node offers."),
                     trial_drivers: int = typer.Option(4, "--trial-drivers", min=1, help="Grid trials the head can drive at once."),
                     root: Optional[Path] = typer.Option(None, "--root", help="Datasets folder the cluster's jobs read "
                                                         "(default: $COVIDCT_BENCH_ROOT or ./datasets)."),
                     folder: Path = LocalDirOpt) -> None:
    """Start a head (127.0.0.2) and NODES-1 more Ray nodes (127.0.0.3, ...) on this machine, token auth on."""
    from covidct_bench.cluster.local import LocalCluster

    c = LocalCluster(folder).up(nodes, cpus, gpus, trial_drivers, root=root)
    console.print(f"[green]local cluster up[/]: {len(c.nodes)} node(s) at {', '.join(n.ip for n in c.nodes)}; "
                  f"dashboard {c.dashboard_url}; datasets {c.root}; logs in {c.folder}", highlight=False)
    where = f" --dir {folder}" if folder != Path(".ray-local") else ""
    console.print(f'use it from this shell with:\n  eval "$(covidct-bench cluster local env{where})"', highlight=False)


@local_app.command("env")
def cluster_local_env(folder: Path = LocalDirOpt) -> None:
    """Print the exports that point Ray clients (grid run, cluster submit, ray status) at the local cluster."""
    from covidct_bench.cluster.local import LocalCluster

    for k, v in LocalCluster.load(folder).env().items():
        sys.stdout.write(f"export {k}={v}\n")


@local_app.command("kill-node")
def cluster_local_kill_node(index: int = typer.Argument(..., help="Node number (1 = the first after the head)."),
                            folder: Path = LocalDirOpt) -> None:
    """SIGKILL a node's raylet, as a lost machine would (Train restarts its workers elsewhere)."""
    from covidct_bench.cluster.local import LocalCluster

    LocalCluster.load(folder).kill_node(index)
    console.print(f"node {index}: raylet killed")


@local_app.command("down")
def cluster_local_down(folder: Path = LocalDirOpt) -> None:
    """Stop the processes this local cluster started (and nothing else)."""
    from covidct_bench.cluster.local import LocalCluster

    LocalCluster.load(folder).down()
    console.print("local cluster stopped")


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("demo"), "--out", help="Folder for everything the demo writes (a rerun reuses it)."),
    preset: str = typer.Option("tiny", "--preset", help="tiny (30 PDFs, 32 px, 2 epochs: minutes on a laptop CPU) or "
                               "small (80 PDFs, 96 px, 6 epochs)."),
    dataset: str = typer.Option("synthetic", "--dataset", help="synthetic (PDFs -> ingest -> grid) or covid-ct (the real "
                                "dataset's official split; skips ingestion)."),
    source: Optional[str] = typer.Option(None, "--source", help="With --dataset covid-ct: a folder in the upstream layout or "
                                         "a file:// URL (default: the upstream repository)."),
    root: Optional[Path] = RootOpt,
) -> None:
    """The whole product in minutes: synthetic paper PDFs -> Ray Data ingest -> manifest, audit, lung masks ->
    a Ray Tune grid of Ray Train jobs -> leaderboard and HTML report. Ctrl-C stops; the same command continues."""
    from covidct_bench.demo import DemoConfig, run_demo

    cfg = DemoConfig(out=out, preset=preset, dataset=dataset, source=source, root=root)
    run_demo(cfg, console, _progress)


FORMATS = ("table", "md", "html", "csv", "json")


@app.command("leaderboard")
def leaderboard(
    results: Optional[list[str]] = typer.Argument(None, help="Results folders or storage URIs: results/ (every grid in it), "
                                                            "results/<grid>, s3://bucket/results [default: results]."),
    grid: Optional[str] = typer.Option(None, "--grid", help="Only this grid."),
    fmt: str = typer.Option("table", "--format", help=f"One of: {', '.join(FORMATS)}."),
    sort: str = typer.Option("auc", "--sort", help="accuracy, f1, auc, sensitivity, specificity, wall_s or images_per_s."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Compare every row with this one (its name or cell id)."),
    out: Optional[str] = typer.Option(None, "--out", help="Write here, a path or a URI (html default: <first results folder>/report.html)."),
    split: str = typer.Option("test", "--split", help="test, or an extra test set (extra:medseg)."),
    boot: int = typer.Option(2000, "--boot", help="Bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resamples."),
    top: int = typer.Option(5, "--top", min=1, help="HTML: ROC and calibration curves of the top K configurations."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Published numbers [default: ablations/reference/paper.yaml]."),
) -> None:
    """Leaderboard of grid results: mean ± sd over seeds, patient-bootstrap 95% intervals, paired tests
    against a baseline, ablation effects, reported paper numbers; as a table, Markdown, HTML, CSV or JSON."""
    from covidct_bench.report import render
    from covidct_bench.report.leaderboard import build, to_json

    if fmt not in FORMATS:
        raise BenchError(f"--format {fmt}: choose from {', '.join(FORMATS)}")
    from covidct_bench.storage import Location

    paths = results or ["results"]
    lb = build(paths, grid=grid, split=split, sort=sort, baseline=baseline, n_boot=boot, seed=seed, reference=reference)
    if fmt == "html":
        from covidct_bench.report import html

        target = html.write(lb, out or Location.of(paths[0]) / "report.html", top_k=top)
        console.print(f"[green]report[/]: {target} ({len(lb.table)} rows; open it in a browser, it needs no network)")
        return
    if fmt == "table":
        if out is None:
            render.terminal(lb, console)
            return
        rec = Console(record=True, width=180, file=io.StringIO())
        render.terminal(lb, rec)
        text = rec.export_text()
    else:
        text = {"md": render.markdown, "csv": render.csv, "json": to_json}[fmt](lb)
    if out is None:
        sys.stdout.write(text)
        return
    Location.of(out).write_text(text)
    console.print(f"[green]{fmt}[/]: {out} ({len(lb.table)} rows)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
