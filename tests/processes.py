"""Starting and stopping the real processes that integration tests run against."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / "var" / "test-logs"
# Every process a test started, in order: a failing test's report shows the end of
# each one's log (tests/conftest.py), since CI keeps only the test run's output.
STARTED: list[Process] = []


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free on ``host``: each socket stays bound until all
    are picked, so the kernel cannot hand one out twice."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def subprocess_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "KIKI_TEST_SUBPROCESS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


class Process:
    """A child process in its own process group, with its output in a log file.

    ``prefix`` goes before ``args`` on the command line: ``ip netns exec NAME`` runs
    the process on a second host (tests/netns.py). Such a prefix must exec the
    command, so that the process group is still the command's.
    """

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        *,
        prefix: Sequence[str] = (),
    ) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOG_DIR / f"{name}-{uuid.uuid4().hex[:8]}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            [*prefix, *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        STARTED.append(self)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40, width: int = 320) -> str:
        return "\n".join(line[:width] for line in self.log().splitlines()[-lines:])

    def wait_for_log(self, needle: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log():
                return
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        raise TimeoutError(
            f"{self.name}: no {needle!r} in {timeout}s:\n{self.log()[-4000:]}"
        )

    def kill(self) -> None:
        """SIGKILL the whole group: the main process and its pool children at once."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def start_worker(
    *,
    queues: str = "asr,default",
    concurrency: int = 1,
    pool: str = "prefork",
    command_prefix: Sequence[str] = (),
    engine_reported: bool = False,
    **env: str,
) -> Process:
    """A Celery worker, once it is ready (and, with ``engine_reported``, once its
    engine is loaded and reported); ``pool``: Celery's ``--pool`` (the bots worker
    runs ``threads``); ``command_prefix`` as in :class:`Process`."""
    name = f"worker-{uuid.uuid4().hex[:6]}"
    proc = Process(
        name,
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "kikipounamu",
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency),
            "-P",
            pool,
            "-n",
            f"{name}@%h",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "info",
        ],
        subprocess_env(**env),
        prefix=command_prefix,
    )
    proc.wait_for_log(" ready.")
    if engine_reported:
        # Its pool process loaded the engine and told the doors what it serves.
        proc.wait_for_log("engine reported")
    return proc


def start_web(**env: str) -> tuple[Process, str]:
    port = free_port()
    proc = Process(
        "web",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "kikipounamu.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        subprocess_env(**env),
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/healthz", timeout=5).ok:
                return proc, base
        except requests.RequestException:
            pass
        if proc.popen.poll() is not None:
            raise RuntimeError(f"web exited:\n{proc.log()[-4000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"web did not answer:\n{proc.log()[-4000:]}")


def start_beat(tmp_path: Path, **env: str) -> Process:
    """Celery beat, which sends the reconcilers on schedule (as in the Procfile)."""
    proc = Process(
        "beat",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "kikipounamu",
            "beat",
            "--schedule",
            str(tmp_path / "celerybeat-schedule"),
            "-l",
            "info",
        ],
        subprocess_env(**env),
    )
    proc.wait_for_log("beat: Starting...")
    return proc
