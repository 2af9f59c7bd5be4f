"""Does a grid (or a training run) fit the cluster? Worker slots counted node by node, live nodes and
autoscaler node types.

A trial holds one ``trial_driver`` unit and starts ``workers`` Train workers of ``cpus`` CPUs and
``gpus`` GPUs each (fractional GPUs: several trials share one GPU; ``workers`` > 1: a data-parallel
trial, e.g. one worker per GPU). A Train worker runs on one node, so the trials that can run at once
are the worker slots of every node (``floor(node CPUs / cpus)``, and the same for GPUs), summed,
over the workers of one trial. Node types the autoscaler may still start (the cluster launcher's
``available_node_types``, in ``~/ray_bootstrap_config.yaml`` on the head, resources filled in by
``ray up``) count too, so a cluster whose GPU workers scale from 0 is not refused; a trial that
fits on no node, now or after scaling, is refused with one line instead of waiting forever.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from covidct_bench.errors import BenchError

AUTOSCALER_CONFIG_ENV = "COVIDCT_BENCH_AUTOSCALER_CONFIG"
_EPS = 1e-9


def _need(cpus: float, gpus: float) -> str:
    return f"{cpus:g} CPU" + (f" + {gpus:g} GPU" if gpus else "")


@dataclass(frozen=True)
class NodeKind:
    """Live nodes (``count`` 1 each) or a node type the autoscaler may start ``count`` times."""

    name: str
    cpus: float
    gpus: float = 0.0
    trial_drivers: float = 0.0
    count: int = 1
    launchable: bool = False

    def slots(self, cpus: float, gpus: float) -> int:
        """Train workers of ``cpus`` + ``gpus`` that fit on one such node."""
        k = math.floor(self.cpus / cpus + _EPS)
        if gpus:
            k = min(k, math.floor(self.gpus / gpus + _EPS))
        return max(k, 0)

    def describe(self) -> str:
        what = _need(self.cpus, self.gpus)
        return f"{self.count} x {self.name} ({what})" if self.launchable else f"{self.name} ({what})"


@dataclass(frozen=True)
class Fit:
    concurrency: int  # trials at once
    slots_now: int  # Train workers that fit on the live nodes
    slots_max: int  # ... once the autoscaler has started every node it may

    @property
    def waits_for_autoscaler(self) -> bool:
        return self.slots_now < self.slots_max


def fit(workers: int, cpus: float, gpus: float, nodes: list[NodeKind]) -> Fit:
    """Trials of ``workers`` x (``cpus``, ``gpus``) that run at once on ``nodes``; BenchError if none ever can."""
    slots_now = sum(n.slots(cpus, gpus) * n.count for n in nodes if not n.launchable)
    slots_max = slots_now + sum(n.slots(cpus, gpus) * n.count for n in nodes if n.launchable)
    drivers = math.floor(sum(n.trial_drivers * n.count for n in nodes) + _EPS)
    k = slots_max // workers
    if k < 1:
        if not any(n.slots(cpus, gpus) for n in nodes):
            largest = max(nodes, key=lambda n: (n.gpus, n.cpus), default=None)
            where = f"no node fits one (largest: {largest.describe()})" if largest else "the cluster has no nodes"
        else:
            where = f"the cluster fits {slots_max} at most"
        raise BenchError(f"resources: a run needs {workers} Train worker(s) of {_need(cpus, gpus)} each and {where}; "
                         f"it would wait forever (ask for fewer CPUs / GPUs / workers: resources in a grid spec, "
                         f"--gpu / --workers for train; or add nodes)")
    return Fit(min(k, drivers) if drivers else k, slots_now, slots_max)


def default_cpus(workers: int, nodes: list[NodeKind]) -> int:
    """CPUs per CPU-only Train worker when the run names none: the most that still lets ``workers`` of
    them fit on the live nodes (one worker per node of a two-node cluster, all CPUs of a laptop)."""
    live = [n for n in nodes if not n.launchable]
    top = max(1, min(int(sum(n.cpus for n in live) // workers), int(max((n.cpus for n in live), default=1))))
    return next((c for c in range(top, 0, -1) if sum(n.slots(c, 0) for n in live) >= workers), 1)


def autoscaler_node_types(config: dict) -> list[NodeKind]:
    """The worker node types of a cluster-launcher config (``ray up``'s bootstrap config on the head)."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    total = int(config.get("max_workers", 0) or 0)
    out = []
    for name, t in types.items():
        if name == head:
            continue
        res = t.get("resources") or {}
        count = int(t.get("max_workers", total) or 0)
        if total:  # the cluster-wide cap
            count = min(count, total)
        if count and res.get("CPU") is not None:
            out.append(NodeKind(name, float(res.get("CPU", 0)), float(res.get("GPU", 0)), float(res.get("trial_driver", 0)),
                                count, launchable=True))
    return out


def cluster_nodes(connected: bool) -> list[NodeKind]:
    """The live Ray nodes, plus the autoscaler's node types when connected to a launcher cluster."""
    import ray

    nodes = [NodeKind(n["NodeID"][:8], float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)),
                      float(n["Resources"].get("trial_driver", 0))) for n in ray.nodes() if n.get("Alive")]
    path = Path(os.environ.get(AUTOSCALER_CONFIG_ENV) or Path.home() / "ray_bootstrap_config.yaml").expanduser()
    if connected and path.is_file():
        import yaml

        try:
            nodes += autoscaler_node_types(yaml.safe_load(path.read_text()) or {})
        except (OSError, yaml.YAMLError, TypeError, ValueError, AttributeError) as e:
            raise BenchError(f"{path}: not a readable cluster-launcher config ({e})") from None
    return nodes
