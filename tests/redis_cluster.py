"""A real Redis Cluster for tests: ``redis-server --cluster-enabled yes`` nodes on loopback ports,
joined by ``redis-cli --cluster create``, never a mock."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis


@dataclass
class Node:
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port(taken: set[int]) -> int:
    """A free loopback port whose cluster-bus port (+10,000) is free too (so at most 55,535)."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20_000, 45_000)
        if port not in taken and port + 10_000 not in taken and _bindable(port) and _bindable(port + 10_000):
            taken.add(port)
            return port
    raise RuntimeError("no free pair of loopback ports for a Redis Cluster node")


class RedisClusterServers:
    """``masters`` masters (each with ``replicas`` replicas) in ``workdir``; ``url`` names the first node.

    No persistence: a killed node's data is gone, as a lost machine's would be, and its replica takes over.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        masters: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 1000,
        launcher: Sequence[str] = ("redis-server",),
        env: Callable[[Path], dict[str, str]] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        """``launcher`` starts a node with redis-server's arguments (e.g. the compose image's entrypoint),
        with ``env(node home)`` added to the environment; ``auth`` (user, password) is who creates and
        watches the cluster when the default user is off."""
        for tool in ("redis-server", "redis-cli"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed; the Redis Cluster tests need it (apt-get install redis)")
        self.workdir = workdir
        self.launcher = list(launcher)
        self.env = env
        self.auth = auth
        self.node_timeout_ms = node_timeout_ms
        self.replicas = replicas
        taken: set[int] = set()
        self.nodes = [Node(cluster_port(taken)) for _ in range(masters * (1 + replicas))]

    @property
    def url(self) -> str:
        return f"redis://{self.nodes[0].address}/0"

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _launch(self, node: Node) -> None:
        home = self.workdir / str(node.port)
        home.mkdir(parents=True, exist_ok=True)
        node.proc = subprocess.Popen(
            [
                *self.launcher,
                "--port", str(node.port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--dir", str(home),
                "--save", "",
                "--appendonly", "no",
                "--logfile", str(home / "redis.log"),
                "--repl-diskless-sync-delay", "0",
            ],
            env=os.environ | (self.env(home) if self.env is not None else {}),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def _start(self) -> None:
        for node in self.nodes:
            self._launch(node)
        for node in self.nodes:
            self._wait(lambda n=node: self._answers(n.port, "PING") is True, f"node {node.address} to start")
        addresses = [n.address for n in self.nodes]
        login = ["--user", self.auth[0], "--pass", self.auth[1], "--no-auth-warning"] if self.auth else []
        replicas = ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        created = subprocess.run(
            ["redis-cli", *login, "--cluster", "create", *addresses, *replicas],
            capture_output=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout.decode()[-2000:]}")
        self.wait_ok()
        # A replica can take over only once it has synced: until then a master's loss loses its slots.
        self._wait(self._replicas_synced, "every replica's first sync")

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every live node reports ``cluster_state:ok`` and its masters cover every slot."""

        def ok() -> bool:
            live = [n for n in self.nodes if n.proc is not None]
            infos = [self._answers(n.port, "CLUSTER INFO") for n in live]
            return all(isinstance(i, dict) and i.get("cluster_state") == "ok" for i in infos)

        self._wait(ok, "the cluster to report ok", timeout_s)

    def _node(self, port: int) -> redis.Redis:
        user, password = self.auth if self.auth else (None, None)
        return redis.Redis(
            host="127.0.0.1",
            port=port,
            username=user,
            password=password,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
        )

    def _answers(self, port: int, *command: str) -> object:
        """A node's reply to ``command``, or None when it does not answer."""
        client = self._node(port)
        try:
            return client.execute_command(*command)
        except redis.RedisError:
            return None
        finally:
            client.close()

    def _replication(self, port: int) -> dict[str, object] | None:
        """``INFO replication`` of a node, or None when it does not answer."""
        client = self._node(port)
        try:
            info: dict[str, object] = client.info("replication")
            return info
        except redis.RedisError:
            return None
        finally:
            client.close()

    def _replicas_synced(self) -> bool:
        infos = [self._replication(node.port) for node in self.nodes]
        return all(i is not None and (i.get("role") != "slave" or i.get("master_link_status") == "up") for i in infos)

    def _live_masters(self) -> list[tuple[Node, list[list[str]]]]:
        """The live masters with their slot ranges, as the first live node sees them."""
        live = {n.port: n for n in self.nodes if n.proc is not None}
        nodes = self._answers(next(iter(live)), "CLUSTER NODES")
        out = []
        for address, info in (nodes if isinstance(nodes, dict) else {}).items():
            flags = str(info.get("flags", ""))
            port = int(str(address).split("@")[0].rsplit(":", 1)[1])
            if "master" in flags and "fail" not in flags and port in live:
                out.append((live[port], info.get("slots", [])))
        return out

    def masters(self) -> list[Node]:
        """The live nodes that are masters now."""
        return [node for node, _ in self._live_masters()]

    def master_of(self, slot: int) -> Node:
        """The live master serving ``slot`` now."""
        for node, slots in self._live_masters():
            if any(int(lo) <= slot <= int(hi) for lo, hi in slots):
                return node
        raise RuntimeError(f"no live master serves slot {slot}")

    def wait_replicated(self, node: Node, timeout_s: float = 10.0) -> None:
        """Until ``node``'s replicas have every write it had acknowledged when called (replication is
        asynchronous: what a master acknowledged in its last milliseconds may die with it, Redis
        Cluster's documented limit). Their offset must reach the master's of then, not equal its
        current one: under a steady write load the two may never be seen equal."""

        def offsets() -> tuple[int, list[int]]:
            info = self._replication(node.port)
            if info is None:
                return -1, []
            replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            return int(str(info.get("master_repl_offset", -1))), [int(r.get("offset", -2)) for r in replicas]

        target: list[int] = []  # the master's offset at the first answer

        def caught_up() -> bool:
            master, replicas = offsets()
            if not target and master >= 0:
                target.append(master)
            return bool(target) and bool(replicas) and all(o >= target[0] for o in replicas)

        self._wait(caught_up, f"{node.address}'s replicas to catch up", timeout_s)

    def kill(self, node: Node) -> None:
        """SIGKILL one node, as a machine loss would."""
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait(timeout=10)
        node.proc = None

    def restart(self, node: Node) -> None:
        """Start a killed node again on its port and cluster config: it rejoins with its slots, and
        nothing of its data (no persistence), and the cluster reports ok."""
        assert node.proc is None, "restart a killed node"
        self._launch(node)
        self._wait(lambda: self._answers(node.port, "PING") is True, f"node {node.address} to start")
        self.wait_ok()

    def wait_failover(self, killed: Node, timeout_s: float = 30.0) -> None:
        """Until a replica of ``killed`` is promoted and the cluster is ok again."""
        masters = len(self.nodes) // (1 + self.replicas)
        self._wait(lambda: len(self.masters()) == masters, "a replica's promotion", timeout_s)
        self.wait_ok(timeout_s)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                node.proc.terminate()
                try:
                    node.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                node.proc = None

    @staticmethod
    def _wait(check: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}")
