"""A real multi-node Ray cluster on this machine: ``ray start --head`` + ``ray start --address`` nodes.

Each node is its own ``ray start --block`` process group on its own loopback address (127.0.0.2 for
the head, 127.0.0.3, ... for the others: Ray would replace 127.0.0.1 by the machine's network
address), with its own ports and temp folder, so the nodes behave like separate hosts and nothing
leaves the machine. Token authentication is on: the token lives in the cluster's folder
(``RAY_AUTH_TOKEN_PATH``), never in ``~/.ray``. ``down`` stops exactly the process groups ``up``
started (``ray stop`` would stop every Ray on the machine). The head holds the grid's
``trial_driver`` units; every node has ``cpus`` CPUs for Train workers. Jobs and their trials see
``COVIDCT_BENCH_ROOT`` = the datasets folder given to ``up`` (as every node of a cloud cluster does).

    covidct-bench cluster local up --nodes 2 --cpus 1      # prints the env to export
    covidct-bench cluster submit -- grid run SPEC --results file:///abs/results
    covidct-bench cluster local down
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from covidct_bench.errors import BenchError

STATE = "cluster.json"
STARTED = "Ray runtime started"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.is_file() else (shutil.which("ray") or "ray")


@dataclass
class Node:
    index: int
    ip: str
    pgid: int
    temp_dir: str
    log: str


@dataclass
class LocalCluster:
    folder: Path
    gcs_port: int = 0
    dashboard_port: int = 0
    nodes: list[Node] = field(default_factory=list)
    root: str = ""  # COVIDCT_BENCH_ROOT of every node

    def __post_init__(self) -> None:
        self.folder = Path(self.folder).resolve()

    # -- state
    @classmethod
    def load(cls, folder: str | os.PathLike) -> "LocalCluster":
        folder = Path(folder)
        try:
            data = json.loads((folder / STATE).read_text())
        except (OSError, ValueError):
            raise BenchError(f"{folder / STATE}: no local cluster here (start one with `cluster local up`)") from None
        return cls(folder, data["gcs_port"], data["dashboard_port"], [Node(**n) for n in data["nodes"]], data.get("root", ""))

    def _save(self) -> None:
        from covidct_bench.io import atomic_path

        with atomic_path(self.folder / STATE) as tmp:
            tmp.write_text(json.dumps({"gcs_port": self.gcs_port, "dashboard_port": self.dashboard_port,
                                       "nodes": [asdict(n) for n in self.nodes], "root": self.root}, indent=2))

    @property
    def token_path(self) -> Path:
        return self.folder / "auth_token"

    @property
    def address(self) -> str:
        return f"{self.nodes[0].ip}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """What a client of this cluster needs: its address and token (``export`` these)."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    # -- lifecycle
    def up(self, nodes: int = 2, cpus: float = 1, gpus: float = 0, trial_drivers: int = 4, timeout: float = 120,
           root: str | os.PathLike | None = None) -> "LocalCluster":
        """Start the head and ``nodes - 1`` more; ``root``: the datasets folder jobs on it read
        (default: $COVIDCT_BENCH_ROOT or ./datasets, made absolute)."""
        from covidct_bench.data.manifest import default_root

        self.root = str(Path(root or default_root()).expanduser().resolve())
        if (self.folder / STATE).is_file() and any(_alive(n.pgid) for n in LocalCluster.load(self.folder).nodes):
            raise BenchError(f"{self.folder}: a local cluster is already running here (`cluster local down` first)")
        if nodes < 1:
            raise BenchError("--nodes: at least 1 (the head)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        self.gcs_port, self.dashboard_port, self.nodes = _free_port(), _free_port(), []
        try:
            for i in range(nodes):
                self._start(i, cpus, gpus, trial_drivers, timeout)
                self._save()
        except BaseException:
            self.down()
            raise
        return self

    def _start(self, i: int, cpus: float, gpus: float, trial_drivers: int, timeout: float) -> None:
        ip = f"127.0.0.{i + 2}"
        temp = tempfile.mkdtemp(prefix=f"rl{i}-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
        cmd = [_ray(), "start", "--block", f"--node-ip-address={ip}", f"--num-cpus={cpus:g}", f"--num-gpus={gpus:g}",
               f"--temp-dir={temp}", "--disable-usage-stats", f"--node-manager-port={_free_port()}",
               f"--object-manager-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
               f"--dashboard-agent-grpc-port={_free_port()}", f"--metrics-export-port={_free_port()}",
               f"--runtime-env-agent-port={_free_port()}"]
        if i == 0:
            cmd += ["--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                    "--include-dashboard=true", f"--ray-client-server-port={_free_port()}",
                    f"--resources={json.dumps({'trial_driver': trial_drivers})}"]
        else:
            cmd += [f"--address={self.address}"]
        log = self.folder / f"node{i}.log"
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path), "COVIDCT_BENCH_ROOT": self.root}
        env.pop("RAY_ADDRESS", None)
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        self.nodes.append(Node(i, ip, proc.pid, temp, str(log)))
        t0 = time.monotonic()
        while STARTED not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() - t0 > timeout:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise BenchError(f"node {i} ({ip}) did not start: {' / '.join(tail) or 'no output'} (log: {log})")
            time.sleep(0.5)

    def raylet_pid(self, index: int) -> int | None:
        """The raylet of node ``index`` (a process of that node's group)."""
        return next((p.pid for p in _group(self.nodes[index].pgid) if p.info["name"] == "raylet"), None)

    def kill_node(self, index: int) -> None:
        """SIGKILL the node's raylet, as a lost machine would: its ``ray start --block`` then stops the rest."""
        if index == 0:
            raise BenchError("node 0 is the head; killing it ends the cluster")
        pid = self.raylet_pid(index)
        if pid is None:
            raise BenchError(f"node {index}: no raylet running")
        os.kill(pid, signal.SIGKILL)

    def down(self, timeout: float = 3) -> None:
        """Stop every process group this cluster started: SIGTERM, then SIGKILL after ``timeout`` s (Ray's
        processes take 20 s and more to stop gracefully; nothing of a local cluster needs saving by then)."""
        for node in reversed(self.nodes):
            _killpg(node.pgid, signal.SIGTERM)
        t0 = time.monotonic()
        while any(_alive(n.pgid) for n in self.nodes) and time.monotonic() - t0 < timeout:
            time.sleep(0.3)
        for node in self.nodes:
            _killpg(node.pgid, signal.SIGKILL)
            shutil.rmtree(node.temp_dir, ignore_errors=True)
        (self.folder / STATE).unlink(missing_ok=True)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group(pgid: int) -> list:
    """The live processes of a process group (zombies of our own children do not count)."""
    import psutil

    out = []
    for p in psutil.process_iter(["name", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                out.append(p)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def _alive(pgid: int) -> bool:
    return bool(_group(pgid))
