"""Real Ray Train runs on tiny phantoms: run folder, determinism, resume, every task, bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from covidct_bench.cli import app
from covidct_bench.errors import BenchError
from covidct_bench.train.config import TrainConfig
from covidct_bench.train.runner import run_training

pytestmark = pytest.mark.slow
TIMING = ["images_per_s", "train_s"]


def tiny(root, **kw) -> TrainConfig:
    base = dict(dataset="synthetic", root=str(root), backbone="resnet18", init="random", image_size=32, epochs=2,
                batch_size=8, seed=0)
    return TrainConfig(**{**base, **kw})


def comparable(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics.drop(columns=TIMING).reset_index(drop=True)


@pytest.fixture(scope="module")
def straight(synthetic_root, ray_local, tmp_path_factory):
    return run_training(tiny(synthetic_root), tmp_path_factory.mktemp("runs") / "straight")


def test_run_folder_holds_config_metrics_predictions_checkpoints(straight):
    out = straight.path
    for f in ("config.yaml", "metrics.parquet", "predictions.parquet", "summary.json", "model.pt"):
        assert (out / f).is_file(), f
    assert list((out / "checkpoints").glob("checkpoint_*/state.pt"))
    m = pd.read_parquet(out / "metrics.parquet")
    assert set(m["split"]) == {"train", "val", "test"} and sorted(m["epoch"].unique()) == [0, 1]
    assert {"accuracy", "precision", "sensitivity", "specificity", "f1", "auc", "threshold"} <= set(m.columns)
    p = pd.read_parquet(out / "predictions.parquet")
    assert list(p.columns[:6]) == ["epoch", "image_id", "patient_id", "split", "y_true", "score"]
    assert set(p["split"]) == {"val", "test"} and p["score"].between(0, 1).all()
    last = p[(p["epoch"] == 1) & (p["split"] == "test")]
    row = m[(m["epoch"] == 1) & (m["split"] == "test")].iloc[0]
    assert ((last["score"] >= row["threshold"]).astype(int) == last["y_pred"]).all()
    assert row["accuracy"] == pytest.approx((last["y_pred"] == last["y_true"]).mean())
    # the threshold is the validation one, applied unchanged to test
    assert row["threshold"] == m[(m["epoch"] == 1) & (m["split"] == "val")]["threshold"].iloc[0]
    s = json.loads((out / "summary.json").read_text())
    assert s["positive_class"].startswith("covid") and s["selected_epoch"] in (0, 1)
    state = torch.load(out / "model.pt", weights_only=True)
    assert state["meta"]["backbone"] == "resnet18" and "fc.weight" in state["state_dict"]


def test_same_seed_same_metrics_and_resume_continues_exactly(straight, synthetic_root, ray_local, tmp_path):
    """The resumed run lives at a storage URI (file://, the code path of s3:// and gs://): checkpoints
    through Ray's pyarrow filesystem, the run's files published there when it finishes."""
    out = f"file://{tmp_path}/resumed"
    first = run_training(tiny(synthetic_root, epochs=1), out)
    assert first.path.uri == out and (tmp_path / "resumed" / "summary.json").is_file()
    pd.testing.assert_frame_equal(comparable(first.metrics), comparable(straight.metrics[straight.metrics["epoch"] == 0]))
    with pytest.raises(BenchError, match="already holds a run; pass --resume"):
        run_training(tiny(synthetic_root, epochs=2), out)
    with pytest.raises(BenchError, match="--resume: .* differs in lr"):
        run_training(tiny(synthetic_root, epochs=2, lr=1e-3), out, resume=True)
    resumed = run_training(tiny(synthetic_root, epochs=2), out, resume=True)
    pd.testing.assert_frame_equal(comparable(resumed.metrics), comparable(straight.metrics))
    pd.testing.assert_frame_equal(resumed.predictions, straight.predictions)
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["resumed_at_epochs"] == [1]
    # that another seed gives other scores is checked on the two seeds of the Optuna grid test


def test_a_run_that_fits_no_node_fails_in_one_line_before_training(synthetic_root, ray_local, tmp_path):
    with pytest.raises(BenchError, match=r"a run needs 1 Train worker\(s\) of 1 CPU \+ 1 GPU each and no node fits one"):
        run_training(tiny(synthetic_root, epochs=1, gpu=True), tmp_path / "gpu")
    assert not (tmp_path / "gpu").exists()


def test_multitask_with_lung_mask_channel(synthetic_root, ray_local, tmp_path):
    r = run_training(tiny(synthetic_root, task="multitask", epochs=1, mask_mode="channel", aspp_rates=(1, 2)), tmp_path / "mt")
    m = r.metrics.set_index("split")
    assert {"cls_loss", "seg_loss"} <= set(m.columns) and m.loc["train", "seg_loss"] > 0
    assert 0 <= m.loc["val", "lesion_dice"] <= 1
    assert "lesion_dice" in r.predictions and r.predictions["lesion_dice"].notna().any()
    assert r.summary["final"]["test"]["auc"] == r.summary["final"]["test"]["auc"]  # not NaN
    state = torch.load(r.path / "model.pt", weights_only=True)
    assert state["state_dict"]["trunk.0.weight"].shape[1] == 4  # image (3) + lung mask


def test_lung_masks_unet_and_its_predictions_as_a_mask_set(synthetic_root, ray_local, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["data", "lung-masks", "synthetic", "--root", str(synthetic_root)])
    assert res.exit_code == 0, res.output
    assert "Dice against the manifest's own lung masks" in res.output
    cfg = tmp_path / "seg.yaml"
    cfg.write_text("unet_base: 4\nlung_masks: classical\n")
    res = runner.invoke(app, ["train", "segment", "--config", str(cfg), "--root", str(synthetic_root), "--image-size", "32",
                              "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "seg")])
    assert res.exit_code == 0, res.output
    m = pd.read_parquet(tmp_path / "seg" / "metrics.parquet").set_index("split")
    for col in ("dice", "iou", "true_dice", "true_iou"):  # against classical masks and the phantoms' true ones
        assert 0 <= m.loc["val", col] <= 1
    res = runner.invoke(app, ["data", "lung-masks", "synthetic", "--root", str(synthetic_root), "--method", "unet",
                              "--run", str(tmp_path / "seg")])
    assert res.exit_code == 0, res.output
    assert (synthetic_root / "synthetic" / "masks" / "unet" / "index.parquet").is_file()
    res = runner.invoke(app, ["data", "lung-masks", "synthetic", "--root", str(synthetic_root), "--method", "unet",
                              "--run", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "nothing does not exist" in res.output and "lung masks" not in res.output


def test_a_relative_cssl_run_is_the_drivers_path(tmp_path, monkeypatch):
    """``--init cssl:RUN`` relative to where the command runs, not to a Ray worker's working directory.
    (MoCo pretraining and fine-tuning from it run in the grid test's ``random+cssl`` cell; loading the
    encoder into a classifier with a mask channel is tests/models/test_heads.py.)"""
    from covidct_bench.train.runner import absolute_paths

    monkeypatch.chdir(tmp_path)
    assert absolute_paths(TrainConfig(init="cssl:runs/moco")).init == f"cssl:{tmp_path / 'runs' / 'moco'}"


def test_bad_inputs_are_one_line_errors(synthetic_root, covid_ct_source, tmp_path):
    from covidct_bench.data import get_dataset

    get_dataset("covid-ct").fetch(root=tmp_path, source=str(covid_ct_source))
    runner = CliRunner()
    cases = [
        (["classify", "--dataset", "covid-ct", "--root", str(tmp_path), "--mask-mode", "channel"],
         "--mask-mode channel: the manifest of 'covid-ct' has no lung masks"),
        (["multitask", "--dataset", "covid-ct", "--root", str(tmp_path), "--init", "random"],
         "--task multitask: the training images of 'covid-ct' have no lesion masks"),
        (["classify", "--root", str(synthetic_root), "--backbone", "resnet7"], "--backbone: unknown backbone 'resnet7'"),
        (["classify", "--root", str(synthetic_root), "--backbone", "resnet18", "--image-size", "16"],
         "--image-size 16 is too small for resnet18"),
        (["classify", "--root", str(synthetic_root), "--lung-masks", "missing", "--mask-mode", "channel"],
         "no mask set 'missing'"),
        (["classify", "--root", str(synthetic_root), "--init", "imagenet", "--weights", str(tmp_path / "none.pth")],
         "none.pth does not exist"),
    ]
    for args, message in cases:
        res = runner.invoke(app, ["train", *args, "--out", str(tmp_path / "never")])
        assert res.exit_code == 1, (args, res.output)
        assert message in res.output, (args, res.output)
        assert len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "never").exists()


def test_two_workers_ddp_score_every_image_once(synthetic_root, ray_local, tmp_path):
    """DDP on 2 CPU workers: distributed sampler, MoCo's cross-worker key gather / shuffled BN, and the
    evaluation gather (each image scored exactly once, none padded in)."""
    moco = {"queue": 16, "hidden": 32, "dim": 8, "knn_k": 3}
    r = run_training(tiny(synthetic_root, task="cssl", epochs=1, workers=2, cpus_per_worker=1, moco=moco), tmp_path / "ddp")
    from covidct_bench.data import load_manifest

    df = load_manifest("synthetic", synthetic_root)
    for split in ("val", "test"):
        got = r.predictions.loc[r.predictions["split"] == split, "image_id"]
        assert sorted(got) == sorted(df.loc[df["split"] == split, "image_id"])
    assert r.metrics.set_index("split").loc["train", "loss"] > 0
