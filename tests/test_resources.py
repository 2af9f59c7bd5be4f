"""Fitting grid trials to a cluster: worker slots node by node, fractional GPUs, multi-GPU trials,
autoscaler node types (cluster.yaml as ``ray up`` fills it in), and grids that could never start."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from covidct_bench.errors import BenchError
from covidct_bench.resources import NodeKind, autoscaler_node_types, default_cpus, fit

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


def test_one_cpu_workers_on_two_one_cpu_nodes_run_two_trials():
    nodes = [NodeKind("head", 1, trial_drivers=4), NodeKind("n2", 1)]
    f = fit(1, 1, 0, nodes)
    assert (f.concurrency, f.slots_now, f.slots_max, f.waits_for_autoscaler) == (2, 2, 2, False)


def test_fractional_gpus_share_a_gpu_and_cpus_still_bound():
    gpu_node = [NodeKind("head", 0, trial_drivers=16), NodeKind("g5.xlarge", 4, 1)]
    assert fit(1, 1, 0.25, gpu_node).concurrency == 4  # 4 trials on one A10G
    assert fit(1, 2, 0.25, gpu_node).concurrency == 2  # ... unless the CPUs run out first
    assert fit(1, 1, 1 / 3, gpu_node).concurrency == 3  # float thirds still make 3


def test_multi_gpu_trials_need_their_workers_somewhere_in_the_cluster():
    four_single = [NodeKind("head", 0, trial_drivers=16)] + [NodeKind(f"g{i}", 4, 1) for i in range(4)]
    assert fit(4, 1, 1, four_single).concurrency == 1  # one 4-worker data-parallel trial over 4 nodes
    assert fit(2, 1, 1, four_single).concurrency == 2
    big = [NodeKind("head", 0, trial_drivers=16), NodeKind("g5.12xlarge", 48, 4)]
    assert fit(4, 4, 1, big).concurrency == 1 and fit(2, 4, 1, big).concurrency == 2


def test_trial_drivers_cap_concurrency():
    assert fit(1, 1, 0, [NodeKind("head", 8, trial_drivers=3)]).concurrency == 3


def test_a_worker_that_fits_no_node_is_refused_with_the_largest_node_named():
    with pytest.raises(BenchError, match=r"a run needs 1 Train worker\(s\) of 1 CPU \+ 2 GPU each and no node fits one "
                                         r"\(largest: n1 \(8 CPU \+ 1 GPU\)\); it would wait forever"):
        fit(1, 1, 2, [NodeKind("head", 0, trial_drivers=4), NodeKind("n1", 8, 1)])
    with pytest.raises(BenchError, match=r"needs 3 Train worker\(s\) of 1 CPU each and the cluster fits 2 at most"):
        fit(3, 1, 0, [NodeKind("head", 1, trial_drivers=4), NodeKind("n2", 1)])
    with pytest.raises(BenchError, match="GPU each and no node fits one"):  # a GPU grid on a CPU-only laptop
        fit(1, 1, 0.5, [NodeKind("local", 2, trial_drivers=64)])


def _filled(config: dict) -> dict:
    """cluster.yaml as `ray up` writes it to the head: node-type resources filled in from the instance type."""
    config = copy.deepcopy(config)
    config["available_node_types"]["gpu_worker"]["resources"] = {"CPU": 4, "GPU": 1}
    return config


def test_a_gpu_grid_on_the_launcher_cluster_waits_for_the_autoscaler_instead_of_failing():
    types = autoscaler_node_types(_filled(yaml.safe_load(CLUSTER.read_text())))
    assert [(t.name, t.cpus, t.gpus, t.count, t.launchable) for t in types] == [("gpu_worker", 4, 1, 4, True)]
    head_only = [NodeKind("head", 0, trial_drivers=16)]  # just after `ray up`: no GPU worker yet
    with pytest.raises(BenchError):
        fit(1, 1, 0.5, head_only)
    f = fit(1, 1, 0.5, head_only + types)
    assert f.waits_for_autoscaler and (f.slots_now, f.slots_max, f.concurrency) == (0, 8, 8)
    # a worker type the config caps at fewer nodes than its own max_workers
    capped = _filled(yaml.safe_load(CLUSTER.read_text()))
    capped["max_workers"] = 2
    assert autoscaler_node_types(capped)[0].count == 2
    # a node type whose resources are unknown (not filled in) is not counted
    assert autoscaler_node_types(yaml.safe_load(CLUSTER.read_text())) == []


def test_default_cpus_per_worker_fit_one_node_each():
    two_small = [NodeKind("head", 1, trial_drivers=4), NodeKind("n2", 1)]
    assert default_cpus(1, two_small) == 1  # not the cluster's 2: no node has 2
    assert default_cpus(1, [NodeKind("laptop", 2)]) == 2 and default_cpus(2, [NodeKind("laptop", 2)]) == 1
    assert default_cpus(2, [NodeKind("a", 3), NodeKind("b", 1)]) == 1  # 2 + 2 fit nowhere, 1 + 1 do
    assert default_cpus(2, [NodeKind("a", 4), NodeKind("b", 1)]) == 2
    assert default_cpus(1, [NodeKind("head", 0, trial_drivers=16), NodeKind("gpu", 4, 1, launchable=True)]) == 1
