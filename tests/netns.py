"""A second host for the tests: a network namespace joined to this one by a veth link.

A process started with :meth:`SecondHost.exec_prefix` (``ip netns exec NAME``) has its
own loopback and one link, a private /30 in 10.213.0.0/16 (``host_ip`` on this side,
``ns_ip`` on its side). The broker, the database and the object store listen on this
machine's loopback only, so the second host reaches them through forwarders bound to
``host_ip`` (:meth:`SecondHost.forward`): every byte crosses the link, and
:meth:`SecondHost.link_down` cuts it as a pulled cable would (packets dropped, no reset
sent, connections hang), :meth:`SecondHost.link_up` restores it.

The forwarders are socat (Debian's ``socat``; scripts/install-test-packages): a
process per listening port that forks one child per connection, each holding two
sockets and copying bytes. That is all a TCP forwarder is; a Python one would be
the same loop written by hand. Connections arrive at Redis and PostgreSQL from
127.0.0.1, so their access rules (pg_hba, Redis's protected mode) stay those of
loopback.

What a namespace does not separate: the file system, the process table and Unix
sockets with a path. A second-host process can see the embedded Redis's socket and an
SQLite database file; the worker env (:meth:`SecondHost.worker_env`) points it at TCP
addresses on the link, and a test gives it its own empty ``MEDIA_ROOT``.

Cleanup always runs (:func:`second_host` is a context manager; the ``second_host``
fixture uses it): processes left inside are killed, the veth pair and the namespace
deleted. Namespaces of test runs that died without cleaning up (their names carry the
pytest process's pid) are deleted by the next run.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import random
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

from tests import processes
from tests.s3_server import S3Server

# Unusual enough not to meet a real network; /30s of it, one per second host.
SUPERNET = ipaddress.IPv4Network("10.213.0.0/16")
_NAME = re.compile(r"^kiki-(\d+)-[0-9a-f]+$")
_SOCAT = "/usr/bin/socat"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args], check=check, capture_output=True, text=True, timeout=30
    )


@functools.cache
def unavailable_reason() -> str | None:
    """Why a second host cannot be made here, or None: needs root, ``ip``
    (iproute2), socat, and a kernel that lets ``ip netns add`` work (some
    containers do not)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "no `ip` command (Debian package iproute2)"
    if not Path(_SOCAT).exists() and shutil.which("socat") is None:
        return "no socat (Debian package socat) for the link's forwarders"
    probe = f"kiki-{os.getpid()}-probe"
    added = _ip("netns", "add", probe, check=False)
    if added.returncode != 0:
        return f"`ip netns add` failed: {added.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class SecondHost:
    """A network namespace with a veth link to this machine, and its forwarders."""

    def __init__(self) -> None:
        token = uuid.uuid4().hex[:8]
        self.name = f"kiki-{os.getpid()}-{token}"
        # Interface names have at most 15 characters.
        self.host_veth = f"kk{token}h"
        self.ns_veth = f"kk{token}n"
        net = _free_subnet()
        self.network = net
        self.host_ip, self.ns_ip = (str(a) for a in net.hosts())
        self.forwarders: list[processes.Process] = []
        self._made = False

    # Life --------------------------------------------------------------------------

    def create(self) -> SecondHost:
        _reap_dead_runs()
        try:
            _ip("netns", "add", self.name)
            self._made = True
            _ip(
                "link", "add", self.host_veth, "type", "veth",
                "peer", "name", self.ns_veth, "netns", self.name,
            )  # fmt: skip
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_veth)
            _ip("link", "set", self.host_veth, "up")
            _ip("-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_veth)
            _ip("-n", self.name, "link", "set", self.ns_veth, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill what runs inside and the forwarders; delete the link and namespace."""
        for proc in self.forwarders:
            proc.kill()
            proc.stop()
        self.forwarders.clear()
        if not self._made:
            return
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # The namespace lives on while a process holds it, and its end of the link
        # with it: delete the link from this side first.
        _ip("link", "del", self.host_veth, check=False)
        _ip("netns", "del", self.name, check=False)
        self._made = False

    def pids(self) -> list[int]:
        """The processes in the namespace."""
        out = _ip("netns", "pids", self.name, check=False).stdout
        return [int(pid) for pid in out.split()]

    # Running things there ------------------------------------------------------------

    @property
    def exec_prefix(self) -> list[str]:
        """Put before a command to run it on the second host (``ip netns exec``
        execs the command: the pid and process group are the command's)."""
        return ["ip", "netns", "exec", self.name]

    def run(
        self, args: Sequence[str], *, timeout: float = 60, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on the second host and wait for it (output captured)."""
        return subprocess.run(
            [*self.exec_prefix, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )

    def start_worker(
        self,
        *,
        s3: S3Server | None = None,
        media_root: Path | None = None,
        **kwargs: Any,
    ) -> processes.Process:
        """A Celery worker on the second host (``processes.start_worker``), pointed
        at the broker, database and (with ``s3``) object store over the link;
        ``kwargs``: start_worker's, and env variables over :meth:`worker_env`'s."""
        options = {k: kwargs.pop(k) for k in ("queues", "concurrency") if k in kwargs}
        env = {**self.worker_env(s3=s3, media_root=media_root), **kwargs}
        return processes.start_worker(command_prefix=self.exec_prefix, **options, **env)

    # The link ----------------------------------------------------------------------

    def link_down(self) -> None:
        """Cut the link: packets either way are dropped; nothing is reset."""
        _ip("link", "set", self.host_veth, "down")

    def link_up(self) -> None:
        """Restore the link; a connection attempt right after it gets through."""
        _ip("link", "set", self.host_veth, "up")
        # The other end reports carrier again within a few milliseconds.
        deadline = time.monotonic() + 5
        while (
            "LOWER_UP"
            not in _ip("-n", self.name, "-o", "link", "show", self.ns_veth).stdout
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.ns_veth} has no carrier after link up")
            time.sleep(0.01)
        # An address looked up (ARP) while the link was down is still being looked
        # up, or marked failed, for up to 3 s: a packet sent then is answered "no
        # route to host" although the link is back. Forget those lookups, both ends.
        _ip("neigh", "flush", "dev", self.host_veth, check=False)
        _ip("-n", self.name, "neigh", "flush", "dev", self.ns_veth, check=False)

    @contextlib.contextmanager
    def link_cut(self) -> Iterator[None]:
        """The link is down inside the block, up again after it."""
        self.link_down()
        try:
            yield
        finally:
            self.link_up()

    # Forwarders --------------------------------------------------------------------

    def forward(self, target: str | tuple[str, int]) -> int:
        """A port on ``host_ip`` that forwards to ``target``: a ``(host, port)`` TCP
        address or a Unix socket's path. The port, once it accepts."""
        port = processes.free_port(self.host_ip)
        if isinstance(target, tuple):
            remote = f"TCP:{target[0]}:{target[1]}"
        else:
            remote = f"UNIX-CONNECT:{target}"
        proc = processes.Process(
            f"forward-{self.name}-{port}",
            [
                shutil.which("socat") or _SOCAT,
                # -d -d: one line per connection opened and closed, for the log tail
                "-d",
                "-d",
                f"TCP-LISTEN:{port},bind={self.host_ip},reuseaddr,fork,backlog=128",
                remote,
            ],
            {"PATH": "/usr/bin:/bin"},
        )
        self.forwarders.append(proc)
        # Ready when it listens (ss), not when a probe connects: a probe would open
        # a connection to the target, which PostgreSQL logs as a broken one.
        deadline = time.monotonic() + 10
        while True:
            listening = subprocess.run(
                ["ss", "-Hltn", "src", f"{self.host_ip}:{port}"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            if listening.strip():
                return port
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"socat did not listen:\n{proc.log()[-2000:]}")
            time.sleep(0.02)

    def forward_redis(self, url: str) -> str:
        """The URL by which the second host reaches the Redis at ``url`` (a redis://
        or unix:// URL: the embedded Redis's socket is forwarded as TCP)."""
        parts = urlsplit(url)
        if parts.scheme == "unix":
            db = dict(parse_qsl(parts.query)).get("db", "0")
            port = self.forward(parts.path)
            return f"redis://{self.host_ip}:{port}/{db}"
        port = self.forward((parts.hostname or "127.0.0.1", parts.port or 6379))
        return _with_address(url, self.host_ip, port)

    def forward_database(self, url: str) -> str | None:
        """The DATABASE_URL by which the second host reaches the PostgreSQL at
        ``url``; None for SQLite, a file that the namespace shares with this machine
        (no link to cross: the second host opens the same file)."""
        parts = urlsplit(url)
        if not url or parts.scheme.startswith("sqlite"):
            return None
        host = parts.hostname or "/var/run/postgresql"
        dbport = parts.port or 5432
        if host.startswith("/"):
            port = self.forward(f"{host}/.s.PGSQL.{dbport}")
        else:
            port = self.forward((host, dbport))
        return _with_address(url, self.host_ip, port)

    def forward_s3(self, server: S3Server) -> str:
        """The endpoint URL by which the second host reaches ``server``."""
        port = self.forward((server.ip, server.port))
        return f"http://{self.host_ip}:{port}"

    def worker_env(
        self, *, s3: S3Server | None = None, media_root: Path | None = None
    ) -> dict[str, str]:
        """Environment overrides for an application process on the second host, for
        this test run's settings: REDIS_URL (the run's Redis, embedded or not, and
        its database number), DATABASE_URL (PostgreSQL; with SQLite none: the
        inherited DATABASE_TEST_NAME names the same file), with ``s3`` the S3_*
        variables, with ``media_root`` MEDIA_ROOT. Each address is a forwarder on
        ``host_ip``, started here and stopped with the second host."""
        from django.conf import settings

        env = {"REDIS_URL": self.forward_redis(settings.REDIS_URL)}
        database = self.forward_database(os.environ.get("DATABASE_URL", ""))
        if database is not None:
            env["DATABASE_URL"] = database
        if s3 is not None:
            env.update(s3.env(endpoint_url=self.forward_s3(s3)))
        if media_root is not None:
            env["MEDIA_ROOT"] = str(media_root)
        return env


@contextlib.contextmanager
def second_host() -> Iterator[SecondHost]:
    """A second host for the block, removed after it whatever happens."""
    host = SecondHost()
    try:
        yield host.create()
    finally:
        host.close()


def _with_address(url: str, host: str, port: int) -> str:
    """``url`` with another host and port, its user, password, path and query kept."""
    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of SUPERNET that no interface of this machine has an address in."""
    used = []
    for line in _ip("-o", "-4", "addr", "show").stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            used.append(
                ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).network
            )
    subnets = SUPERNET.num_addresses // 4
    for _ in range(100):
        index = random.randrange(subnets)
        net = ipaddress.IPv4Network((int(SUPERNET.network_address) + 4 * index, 30))
        if not any(net.overlaps(other) for other in used):
            return net
    raise RuntimeError(f"no free /30 in {SUPERNET}")


def _reap_dead_runs() -> None:
    """Delete the namespaces of test runs whose pytest process is gone."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NAME.match(name)
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            _ip("netns", "del", name, check=False)
        except PermissionError:
            pass
