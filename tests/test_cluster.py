"""A real two-node Ray cluster on loopback (token authentication, as ``ray start --head`` sets it up in
Ray 2.60): losing the worker node mid-search costs no trial, and a driver without the token is told so.

Slow (two ``ray start`` nodes, a search): marked ``ray`` and ``slow``; CI runs it, the quick loop
(``pytest -m "not slow"``) skips it.
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
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free right now (bound to port 0, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pids_under(folder: str) -> list[int]:
    """PIDs of the processes whose command line names ``folder`` (every process of a cluster started there)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and folder.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


def _children(pid: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            pass
    return out


class LoopbackCluster:
    """A head and one worker node started with ``ray start`` on 127.0.0.1, own ports and temp folder,
    token authentication on every process; :meth:`stop` kills exactly its own processes."""

    def __init__(self, cpus_per_node: int = 1):
        self.temp = tempfile.mkdtemp(prefix="aoray", dir="/tmp")  # short: Ray's socket paths have a length limit
        token = secrets.token_hex(32)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)
        ports = _free_ports(16)
        self.port = ports[0]
        self.address = f"127.0.0.1:{self.port}"

        def node_ports(p):
            return ["--node-manager-port", str(p[0]), "--object-manager-port", str(p[1]),
                    "--dashboard-agent-listen-port", str(p[2]), "--dashboard-agent-grpc-port", str(p[3]),
                    "--metrics-export-port", str(p[4]), "--runtime-env-agent-port", str(p[5]),
                    "--min-worker-port", str(p[6]), "--max-worker-port", str(p[6] + 40)]

        base = ["ray", "start", "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus_per_node),
                "--disable-usage-stats"]
        worker_range = _free_port_range(80)
        self._start(base + ["--head", "--port", str(self.port), "--temp-dir", self.temp, "--include-dashboard=false",
                            *node_ports(ports[1:7] + [worker_range])])
        self.head_pids = set(_pids_under(self.temp))
        self._start(base + ["--address", self.address, *node_ports(ports[7:13] + [worker_range + 40])])
        self.worker_node_manager_port = ports[7]

    def _start(self, cmd: list[str]) -> None:
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"{' '.join(cmd[:3])} failed: {done.stderr[-1500:]}")

    def worker_raylet(self) -> int:
        """PID of the worker node's raylet."""
        flag = f"--node_manager_port={self.worker_node_manager_port}".encode()
        for pid in _pids_under(self.temp):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"raylet" in cmdline.split(b"\0")[0] and flag in cmdline:
                return pid
        raise RuntimeError("the worker node's raylet is not running")

    def stop(self) -> None:
        for _ in range(3):
            pids = _pids_under(self.temp)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(1)
        shutil.rmtree(self.temp, ignore_errors=True)


def _free_port_range(width: int) -> int:
    """The first port of ``width`` consecutive ports free right now."""
    for start in range(20000 + secrets.randbelow(20000), 60000, width):
        try:
            socks = []
            for port in range(start, start + width):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return start
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


@pytest.fixture
def loopback_cluster():
    cluster = LoopbackCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def _search_cmd(tmp_path, eurosat_root, out, *extra):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"method": "coop", "lr": {"type": "float", "low": 1e-3,
                                                                          "high": 1e-2, "log": True}}}))
    base = [f"dataset=eurosat", f"data_root={eurosat_root}", f"backbone={TINY}", "pretrained=none",
            f"descriptions_dir={eurosat_root}", f"cache_dir={tmp_path / 'cache'}", "shots=4", "epochs=200",
            "train_views=1", "device=cpu"]
    return [sys.executable, "-m", "anchoropt.cli", "search", "--space", str(space), "--out", str(out),
            "--sampler", "random", *extra, *base]


def test_losing_the_worker_node_mid_search_costs_no_trial(loopback_cluster, tmp_path, eurosat_root):
    out = tmp_path / "search"
    cmd = _search_cmd(tmp_path, eurosat_root, out, "--num-trials", "3", "--address", loopback_cluster.address)
    search = subprocess.Popen(cmd, env=loopback_cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        raylet = loopback_cluster.worker_raylet()
        deadline = time.time() + 300
        # a trial training on the worker node: an actor process whose parent is the worker's raylet
        while time.time() < deadline and search.poll() is None and not any(
                b"ImplicitFunc" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in _children(raylet)
                if Path(f"/proc/{pid}/cmdline").exists()):
            time.sleep(0.3)
        assert search.poll() is None, search.stdout.read()[-3000:]
        time.sleep(1)  # mid-trial (the trial trains for 200 epochs)
        os.kill(raylet, signal.SIGKILL)
        output, _ = search.communicate(timeout=900)
    finally:
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)
    assert search.returncode == 0, output[-3000:]
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert any(row["status"] == "lost" for row in lines), "the trial on the lost node was not seen as lost"
    # the resumed search (here: nothing left to run) ends with the full budget, every trial once, none failed
    resumed = subprocess.run([sys.executable, "-m", "anchoropt.cli", "search", "--resume", str(out)],
                             env={k: v for k, v in loopback_cluster.env.items() if not k.startswith("RAY_AUTH")},
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    finished = [row for row in lines if row["status"] in ("complete", "failed")]
    assert sorted(r["trial"] for r in finished) == sorted({r["trial"] for r in finished})  # no duplicate
    assert [r["status"] for r in finished] == ["complete"] * 3
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["num_trials"], summary["complete"], summary["failed"]) == (3, 3, 0)
    lost = next(row for row in lines if row["status"] == "lost")
    assert any(r["params"] == lost["params"] for r in finished)  # the lost trial itself was re-run
    assert "3 trials done" in (out / "best_config.yaml").read_text()


def test_driver_without_the_token_is_told_in_one_line(loopback_cluster, tmp_path, eurosat_root):
    home = tmp_path / "home"  # no ~/.ray/auth_token there
    home.mkdir()
    env = {k: v for k, v in loopback_cluster.env.items() if not k.startswith("RAY_AUTH")}
    out = tmp_path / "search"
    done = subprocess.run(_search_cmd(tmp_path, eurosat_root, out, "--num-trials", "1", "--address",
                                      loopback_cluster.address), env={**env, "HOME": str(home)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("anchoropt: error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert loopback_cluster.address in errors[0] and "RAY_AUTH_MODE=token" in errors[0]
    assert not out.exists()  # no half-made search folder
