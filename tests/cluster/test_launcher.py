"""The cluster launcher wrappers: what they check before `ray up` / `ray job submit`, and what they run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from covidct_bench.cluster import launcher as L
from covidct_bench.errors import BenchError

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "covidct_bench.cli"]


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, **kw)


def test_a_missing_cloud_sdk_names_the_extra(tmp_path):
    L.check_sdk(L.load_config(REPO / "cluster.yaml"), "cluster.yaml")  # boto3 is a dependency of this environment
    gcp = tmp_path / "gcp.yaml"
    gcp.write_text(yaml.safe_dump({"cluster_name": "x", "provider": {"type": "gcp", "region": "us-west1"}}))
    p = cli("cluster", "up", str(gcp), "--yes")
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [f"error: {gcp}: provider gcp needs the googleapiclient package for `ray up`; "
                                             "install it with pip install 'covidct-bench[gcp]'"]


@pytest.mark.parametrize("text, message", [("provider: [", "not valid YAML"), ("cluster_name: x\n", "provider: missing")])
def test_a_bad_config_is_one_line(tmp_path, text, message):
    bad = tmp_path / "c.yaml"
    bad.write_text(text)
    p = cli("cluster", "down", str(bad))
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1 and message in p.stderr
    assert cli("cluster", "status", str(tmp_path / "none.yaml")).returncode == 1


def test_the_token_is_generated_once_where_ray_looks_for_it(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    code = "from covidct_bench.cluster.launcher import ensure_token; p, made = ensure_token(); print(p, made)"
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert first.stdout.split() == [str(tmp_path / ".ray" / "auth_token"), "True"], first.stderr[-2000:]
    token = (tmp_path / ".ray" / "auth_token").read_text().strip()
    assert len(token) >= 32
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert again.stdout.split()[-1] == "False" and (tmp_path / ".ray" / "auth_token").read_text().strip() == token
    missing = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**env, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "nope")})
    assert missing.returncode != 0 and "RAY_AUTH_TOKEN_PATH" in missing.stderr


def test_submit_runs_covidct_bench_in_the_uploaded_repository_and_keeps_results(tmp_path):
    cmd = L.submit_command(["grid", "run", "ablations/smoke.yaml", "--results", "s3://bucket/results"], "http://127.0.0.1:8265",
                           tmp_path, no_wait=True)
    assert cmd[1:4] == ["job", "submit", "--address"] and cmd[4] == "http://127.0.0.1:8265"
    assert cmd[cmd.index("--working-dir") + 1] == str(tmp_path) and "--no-wait" in cmd
    assert ".git" in json.loads(cmd[cmd.index("--runtime-env-json") + 1])["excludes"]
    assert cmd[cmd.index("--") + 1:] == ["covidct-bench", "grid", "run", "ablations/smoke.yaml", "--results", "s3://bucket/results"]
    L.check_job_args(["grid", "run", "x.yaml", "--results=/shared/results"])  # absolute: every node sees it
    for results in (["--results", "results"], []):
        with pytest.raises(BenchError, match="relative results would be lost"):
            L.submit_command(["grid", "run", "x.yaml", *results])
    with pytest.raises(BenchError, match="name the covidct-bench command"):
        L.submit_command([])
    p = cli("cluster", "submit", "--", "grid", "run", "ablations/smoke.yaml")  # nothing is submitted
    assert p.returncode == 1 and "--results results: the job runs in a temporary copy" in p.stderr


def test_status_runs_on_the_head_through_the_launcher_or_at_an_address():
    assert L.status_command("cluster.yaml")[1:] == ["exec", "cluster.yaml", "ray status"]
    assert L.status_command(address="127.0.0.2:6379")[1:] == ["status", "--address", "127.0.0.2:6379"]
    assert L.up_command("cluster.yaml", yes=True, restart=False)[1:] == ["up", "cluster.yaml", "-y", "--no-restart"]
    assert L.down_command("cluster.yaml", yes=True)[1:] == ["down", "cluster.yaml", "-y"]
    assert L.dashboard_command("cluster.yaml")[1:] == ["dashboard", "cluster.yaml"]
