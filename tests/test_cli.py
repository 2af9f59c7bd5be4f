import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from covidct_bench.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args", [[], ["data"], ["data", "fetch"], ["data", "synth"], ["data", "audit"],
                                  ["data", "cache"], ["data", "list"], ["data", "synth-pdfs"], ["ingest"],
                                  ["ingest", "run"], ["ingest", "review"], ["ingest", "apply-review"]])
def test_help_everywhere(args):
    res = runner.invoke(app, [*args, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output


def test_synth_then_audit_json(tmp_path):
    res = runner.invoke(app, ["data", "synth", "--root", str(tmp_path), "--n", "12", "--size", "48",
                              "--slices-per-patient", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["data", "audit", "synthetic", "--root", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["counts"]["train"]["covid"] + out["counts"]["train"]["non_covid"] > 0
    for key in ("patient_leakage", "exact_duplicates_across_splits", "near_duplicates_across_splits"):
        assert out[key] == 0


def test_fetch_via_cli_and_errors_are_one_line(covid_ct_source, tmp_path):
    res = runner.invoke(app, ["data", "fetch", "covid-ct", "--source", str(covid_ct_source), "--root", str(tmp_path)])
    assert res.exit_code == 0 and "24 images fetched and verified" in res.stdout
    res = runner.invoke(app, ["data", "fetch", "covid-ct", "--source", str(covid_ct_source), "--root", str(tmp_path)])
    assert "already there, verified" in res.stdout
    res = runner.invoke(app, ["data", "fetch", "imagenet"])
    assert res.exit_code == 1 and res.stderr.strip() == "error: unknown dataset 'imagenet' (known: covid-ct, medseg, synthetic)"
    res = runner.invoke(app, ["data", "synth", "--root", str(tmp_path), "--style", "fancy"])
    assert res.exit_code == 1 and res.stderr.startswith("error: style:") and len(res.stderr.strip().splitlines()) == 1


def test_console_script_entry_point(tmp_path):
    res = subprocess.run([sys.executable, "-m", "covidct_bench.cli", "data", "audit", str(tmp_path / "none")],
                         capture_output=True, text=True)
    assert res.returncode == 1 and res.stderr.startswith("error:") and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "covidct_bench.cli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("covidct-bench ")


def test_synth_pdfs_ingest_review_via_cli(tmp_path):
    res = runner.invoke(app, ["data", "synth-pdfs", "--out", str(tmp_path / "pdfs"), "--n", "2", "--seed", "1",
                              "--panel-size", "96"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["ingest", "run", str(tmp_path / "pdfs"), "--out", str(tmp_path / "out"),
                              "--engine", "local"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "manifest.parquet").is_file()
    res = runner.invoke(app, ["ingest", "review", str(tmp_path / "out")])
    assert res.exit_code == 0 and (tmp_path / "out" / "review.html").is_file()


@pytest.mark.parametrize("args,needle", [
    (["ingest", "run", "NOPE", "--out", "x"], "NOPE: not a folder of PDFs"),
    (["ingest", "run", ".", "--out", "x", "--engine", "spark"], "--engine: 'spark'"),
    (["ingest", "apply-review", "NOPE", "missing.csv"], "missing.csv: not found"),
    (["ingest", "score-captions", "missing.csv"], "missing.csv: not found"),
])
def test_ingest_errors_are_one_line(args, needle):
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    assert needle in res.output and res.output.count("\n") == 1
