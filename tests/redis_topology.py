"""Test helpers: Redis topologies of the test's own, from the ``redis-server`` binary on free loopback ports.

A primary with replicas, and Redis Sentinels watching it (``redis-server --sentinel`` with a config file of its own:
Sentinel rewrites it). Every process is killable and restartable on the same port; :meth:`Topology.stop` ends all.
A Redis Cluster of N primaries (:class:`Cluster`: ``--cluster-enabled yes``, then ``redis-cli --cluster create``),
each with an AOF written on every command, so that a primary SIGKILLed and started again keeps what it answered.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from worker.cli.embedded import answers, free_port

MASTER = "ctrelay-test"


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def cluster_binaries() -> tuple[str, str] | None:
    """``redis-server`` and ``redis-cli`` (which creates the cluster), or None when either is missing."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    return (server, cli) if server and cli else None


@dataclass
class Node:
    """One ``redis-server`` (a data node or a Sentinel) on a fixed port in its own directory."""

    binary: str
    workdir: Path
    port: int
    args: list[str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, *self.args],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while not answers(self.url, timeout=0.2):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server on {self.port} did not start: {self.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def client(self) -> redis.Redis:
        """A new client (close it; or use :meth:`call` for one command)."""
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def call(self, *command: str | int) -> Any:
        """One command, on a connection closed afterwards."""
        with self.client() as client:
            return client.execute_command(*command)


@dataclass
class Topology:
    """A primary, its replicas and the Sentinels watching them."""

    root: Path
    binary: str
    nodes: list[Node] = field(default_factory=list)
    sentinels: list[Node] = field(default_factory=list)

    def data_node(self, replica_of: Node | None = None) -> Node:
        port = free_port()
        workdir = self.root / f"redis-{port}"
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of.port)]
        node = Node(self.binary, workdir, port, args)
        node.start()
        self.nodes.append(node)
        return node

    def sentinel(self, primary: Node, quorum: int = 2) -> Node:
        port = free_port()
        workdir = self.root / f"sentinel-{port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "sentinel.conf"
        config.write_text(
            "\n".join(
                [
                    f"port {port}",
                    "bind 127.0.0.1",
                    f"dir {workdir}",
                    f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} {quorum}",
                    f"sentinel down-after-milliseconds {MASTER} 1000",
                    f"sentinel failover-timeout {MASTER} 5000",
                    f"sentinel parallel-syncs {MASTER} 1",
                    "",
                ]
            )
        )
        node = Node(self.binary, workdir, port, [str(config), "--sentinel"])
        node.start()
        self.sentinels.append(node)
        return node

    @property
    def sentinel_setting(self) -> str:
        """``CTRELAY_REDIS_SENTINELS`` for these Sentinels."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)

    def primary_port(self) -> int | None:
        """The port of the primary as the first answering Sentinel names it."""
        for node in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                address = node.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
                if address:
                    return int(address[1])
        return None

    def wait_replicated(self, primary: Node, replicas: int, timeout_s: float = 20) -> None:
        """Until ``primary`` has ``replicas`` connected replicas in sync."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                with primary.client() as client:
                    info = client.info("replication")
                online = [v for k, v in info.items() if k.startswith("slave") and v.get("state") == "online"]
                if len(online) >= replicas:
                    return
            time.sleep(0.1)
        raise AssertionError(f"{primary.port} did not get {replicas} replicas: {primary.log_tail()}")

    def stop(self) -> None:
        for node in [*self.sentinels, *self.nodes]:
            node.kill()


@dataclass
class Cluster:
    """A Redis Cluster of primaries only, on free ports (see the module docstring)."""

    root: Path
    binary: str
    cli: str
    nodes: list[Node] = field(default_factory=list)

    def start(self, primaries: int = 3) -> None:
        for _ in range(primaries):
            port = free_port()
            while port > 55535:  # redis-server refuses higher ports in cluster mode (its bus port was port + 10000)
                port = free_port()
            workdir = self.root / f"cluster-{port}"
            args = [
                "--port", str(port), "--cluster-port", str(free_port()), "--bind", "127.0.0.1", "--dir", str(workdir),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
                "--cluster-require-full-coverage", "no", "--save", "", "--appendonly", "yes", "--appendfsync", "always",
            ]  # fmt: skip
            node = Node(self.binary, workdir, port, args)
            node.start()
            self.nodes.append(node)
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        created = subprocess.run(
            [self.cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]} {created.stderr[-2000:]}")
        self.wait_ok()

    @property
    def url(self) -> str:
        """``REDIS_URL`` for the cluster (any node does)."""
        return self.nodes[0].url

    def wait_ok(self, timeout_s: float = 30) -> None:
        """Until every node says ``cluster_state:ok`` and knows every node."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                with contextlib.suppress(redis.RedisError):
                    info = node.call("CLUSTER", "INFO")
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    states.append("cluster_state:ok" in text and f"cluster_known_nodes:{len(self.nodes)}" in text)
            if len(states) == len(self.nodes) and all(states):
                return
            time.sleep(0.1)
        raise AssertionError(f"the cluster did not become ok: {[node.log_tail()[-500:] for node in self.nodes]}")

    def owner(self, key: str) -> Node:
        """The node that serves ``key``'s slot (asked with CLUSTER KEYSLOT and CLUSTER SLOTS)."""
        slot = int(self.nodes[0].call("CLUSTER", "KEYSLOT", key))
        for start, end, primary, *_ in self.nodes[0].call("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                port = int(primary[1])
                return next(node for node in self.nodes if node.port == port)
        raise AssertionError(f"no node serves slot {slot} of {key!r}")

    def keys_on(self, node: Node, prefix: str) -> list[str]:
        """The keys under ``prefix`` that ``node`` itself holds."""
        with node.client() as client:
            return [key.decode() for key in client.scan_iter(match=f"{prefix}:*", count=1000)]

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
