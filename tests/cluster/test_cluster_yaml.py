"""cluster.yaml is checked offline with the cluster launcher's own schema (what `ray up` validates)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_passes_rays_validation(config):
    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.mark.parametrize("path", [("max_worker",), ("available_node_types", "gpu_worker", "min_worker"),
                                  ("docker", "imag"), ("available_node_types", "head", "node_confg")])
def test_a_typo_in_a_key_fails_validation(config, path):
    bad = copy.deepcopy(config)
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = 1
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_config(prepare_config(bad))


def test_head_trains_nothing_workers_are_spot_gpus_and_the_dashboard_stays_local(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and head["resources"]["trial_driver"] >= 1
    worker = config["available_node_types"]["gpu_worker"]
    assert worker["min_workers"] == 0 and worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert re.match(r"g\d", worker["node_config"]["InstanceType"])
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    assert "/home/ray/covidct-bench" in config["file_mounts"] and any("pip install" in c for c in config["setup_commands"])
    # token auth on for every process of every node, with the token the client holds mounted on each
    assert "--env=RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    text = CLUSTER.read_text()
    assert not re.search(r"(?i)aws_access_key|aws_secret|secret_access|password|RAY_AUTH_MODE\s*[:=]\s*disabled", text)
