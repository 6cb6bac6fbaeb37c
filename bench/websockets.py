"""Benchmark of live job updates: real uvicorn, real Celery worker, real Redis, real
WebSocket clients in processes of their own.

Run from the project root with the virtualenv:

    .venv/bin/python bench/websockets.py                 # full run, under ~5 minutes
    .venv/bin/python bench/websockets.py --quick         # smaller, about a minute
    .venv/bin/python bench/websockets.py --only storm --client-procs 1
    .venv/bin/python bench/websockets.py --only memory \
        --uvicorn-arg=--ws-per-message-deflate=false      # any uvicorn flag
    .venv/bin/python bench/websockets.py --what-if connmaxage  # a proposed change
    .venv/bin/python bench/websockets.py --quick --py-spy  # where the CPU goes

It sets up its own world and removes it at the end (also on Ctrl-C): a fresh SQLite
file under var/bench-ws/, database 13 of the project's embedded Redis (or of REDIS_URL
if set, which must then be empty there), flushed at the start and at the end, and its
own MEDIA_ROOT under var/bench-ws/. The logs of the processes it starts stay in
var/bench-ws/logs/. Each phase starts ONE uvicorn process (--workers 1, so its memory
is one process's) with the flags of the Procfile; the clients run in separate
processes (the `websockets` library, permessage-deflate offered as browsers do).

Figures:
  latency  job finished -> client received: the `succeeded` event's receive time at
           a client watching the job (the signed link from the API's 202 answer)
           minus the job's finished_at, written by the real worker (synthetic engine,
           rtf 0); the clients are connected before the worker starts, which then
           runs the queue one job after another
  memory   RSS of the uvicorn process with N idle WebSockets (each got its snapshot)
           minus its RSS before, after a warm-up of a few connections
  storm    N clients connect at once to a freshly started web process: the time
           until every one holds its snapshot, and how many failed

Each phase also reports the CPU each process used per job or connection, how much of
the wall time the web process was running, and how much of the machine went to other
programs meanwhile: on a small shared machine that says whether a figure is the code's
or the neighbours'. --py-spy records the web process (and the worker) during each
measurement and prints the functions that took the CPU; --what-if runs the servers
with bench/ws_whatif_settings.py, to measure a proposed change before making it.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder is first on sys.path, and this very file would
# then shadow the `websockets` library: put the project root there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import datetime as dt  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import queue  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import wave  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from bench import pipeline as pl  # noqa: E402
from kikipounamu.redis_server import with_db  # noqa: E402

WS_DIR = ROOT / "var" / "bench-ws"
REDIS_DB = 13
PHASES = ("latency", "memory", "storm")
WHAT_IFS = ("connmaxage",)

LATENCY_P50_TARGET = 0.005
LATENCY_P99_TARGET = 0.025
MEMORY_TARGET_MB = 150.0
STORM_TARGET_SECONDS = 30.0

# What a full and a quick run do; a full run stays under ~5 minutes.
FULL = {
    "jobs": 250,  # latency samples; the other phases' connections spread over them
    "memory_connections": 1000,
    "hold_seconds": 5.0,
    "storm_connections": 2000,
}
QUICK = {
    "jobs": 60,
    "memory_connections": 200,
    "hold_seconds": 2.0,
    "storm_connections": 400,
}
WARM_UP_CONNECTIONS = 20
# Connections a client process opens at a time when opening at once is not the point.
PACED_CONCURRENCY = 50


# Environment ---------------------------------------------------------------------------


def configure_environment() -> str:
    """Point this process and every child (they inherit os.environ) at the bench
    database, Redis database and media; return "given" (REDIS_URL) or "embedded"."""
    WS_DIR.mkdir(parents=True, exist_ok=True)
    pl.LOG_DIR = WS_DIR / "logs"  # pipeline.Process writes its logs there
    shutil.rmtree(pl.LOG_DIR, ignore_errors=True)  # the last run's logs only
    os.environ["DJANGO_SETTINGS_MODULE"] = "kikipounamu.settings"
    media = WS_DIR / "media"
    shutil.rmtree(media, ignore_errors=True)
    media.mkdir(parents=True)
    os.environ["MEDIA_ROOT"] = str(media)
    db = WS_DIR / "db.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    os.environ["DATABASE_URL"] = f"sqlite:///{db}"
    # The latency phase queues all its jobs before a worker runs, from one user: per-user
    # rate limits and queue-depth backpressure would refuse most of them.
    for name in ("API_THROTTLE_USER", "API_THROTTLE_SUBMIT"):
        os.environ[name] = "1000000/min"
    os.environ["ASR_MAX_QUEUE_DEPTH"] = "1000000"
    if os.environ.get("REDIS_URL"):
        os.environ["REDIS_URL"] = with_db(os.environ["REDIS_URL"], REDIS_DB)
        return "given"
    os.environ["KIKI_REDIS_DB"] = str(REDIS_DB)
    return "embedded"


def raise_nofile_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit; children (web, clients) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def wav_clip() -> Path:
    """Half a second of a tone: the synthetic engine does not listen."""
    path = WS_DIR / "clip.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(
            b"".join(
                struct.pack("<h", int(4000 * math.sin(i / 10))) for i in range(8_000)
            )
        )
    return path


def teardown() -> None:
    with contextlib.suppress(Exception):
        pl.redis_client().flushdb()
    with contextlib.suppress(Exception):
        from django.db import connections

        connections.close_all()
    shutil.rmtree(WS_DIR / "media", ignore_errors=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{WS_DIR / 'db.sqlite3'}{suffix}").unlink(missing_ok=True)
    (WS_DIR / "clip.wav").unlink(missing_ok=True)


# Servers -------------------------------------------------------------------------------


def start_web(s: pl.Stack, uvicorn_args: list[str]) -> str:
    """One uvicorn process, as the Procfile runs it but with --workers 1."""
    import httpx

    port = pl.free_port()
    s.web = proc = pl.Process(
        f"web-{port}",
        pl.uvicorn_command(port=port, workers=1, log_level=None, extra=uvicorn_args),
        {},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return base
        proc.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"web did not answer:\n{proc.tail()}")
        time.sleep(0.1)


def start_worker(s: pl.Stack) -> pl.Process:
    """The asr worker of the Procfile (prefork, one process), synthetic engine."""
    return s.start_worker(
        pool="prefork", concurrency=1, ASR_ENGINE="synthetic", ASR_SYNTHETIC_RTF="0"
    )


def wait_ready(worker: pl.Process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while " ready." not in worker.log_path.read_text(errors="replace"):
        worker.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker not ready in {timeout:.0f}s:\n{worker.tail()}")
        time.sleep(0.05)


def web_rss(s: pl.Stack) -> int:
    import psutil

    assert s.web is not None
    return int(psutil.Process(s.web.popen.pid).memory_info().rss)


def submit_jobs(base: str, token: str, clip: Path, count: int) -> list[str]:
    """``count`` uploads through the API; the path and query of each 202 answer's
    ``links.websocket`` (the job's WebSocket with its signed token)."""
    raw = pl.multipart_request(base, token, clip)
    host, port = base.removeprefix("http://").split(":")
    links: list[str] = []

    async def one_client(n: int) -> None:
        conn = pl.Connection(host, int(port))
        try:
            for _ in range(n):
                status, body = await asyncio.wait_for(conn.request(raw), 60)
                if status != 202:
                    raise RuntimeError(f"submit: HTTP {status}: {body[:300]!r}")
                url = urlsplit(json.loads(body)["links"]["websocket"])
                links.append(f"{url.path}?{url.query}")
        finally:
            await conn.close()

    async def run() -> None:
        clients = 4
        await asyncio.gather(
            *(
                one_client(count // clients + (k < count % clients))
                for k in range(clients)
            )
        )

    asyncio.run(run())
    return links


def job_id(link: str) -> str:
    return link.split("?")[0].rstrip("/").rsplit("/", 1)[1]


def ws_urls(base: str, links: list[str], count: int) -> list[str]:
    """``count`` WebSocket URLs, going round the jobs."""
    ws_base = base.replace("http://", "ws://")
    return [ws_base + links[i % len(links)] for i in range(count)]


# Client processes ----------------------------------------------------------------------


class Clients:
    """A process of WebSocket clients (this file with --client), driven over its stdin
    and answering on its stdout with lines ``<word> <json>``."""

    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        pl.LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = pl.LOG_DIR / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--client"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(json.dumps(spec))

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def expect(self, word: str, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.name}: no {word!r} in {timeout:.0f}s") from None
        if line is None:
            raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
        got, _, data = line.partition(" ")
        if got != word:
            raise RuntimeError(f"{self.name}: expected {word!r}, got {line[:300]!r}")
        return json.loads(data)

    def tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        self._log.close()


_client_numbers = itertools.count(1)


@contextlib.contextmanager
def clients(specs: list[dict[str, Any]]) -> Any:
    procs: list[Clients] = []
    try:
        for spec in specs:
            procs.append(Clients(f"clients-{next(_client_numbers)}", spec))
        for p in procs:
            p.expect("armed", 60)
        yield procs
    finally:
        for p in procs:
            p.stop()


def open_and_close(urls: list[str]) -> None:
    """A few connections, opened, answered and closed: lazy imports and first-use
    costs of the web process are not what the phases measure."""
    with clients([{"urls": urls, "concurrency": PACED_CONCURRENCY}]) as (c,):
        c.send("go")
        ready = c.expect("ready", 120)
        if ready["errors"]:
            raise RuntimeError(f"warm-up failed: {ready['error_samples']}")
        c.send("close")
        c.expect("closed", 60)


async def _client(spec: dict[str, Any]) -> None:
    """Client side: open every URL, wait for its snapshot, report, then (optionally)
    wait for each job's final event; close when told."""
    from websockets.asyncio.client import connect

    loop = asyncio.get_running_loop()

    async def command() -> str:
        return (await loop.run_in_executor(None, sys.stdin.readline)).strip()

    def say(word: str, data: dict[str, Any]) -> None:
        print(word, json.dumps(data), flush=True)

    urls: list[str] = spec["urls"]
    open_timeout = float(spec.get("open_timeout", 60))
    limit = spec.get("concurrency")
    gate: Any = asyncio.Semaphore(limit) if limit else contextlib.nullcontext()
    conns: list[Any] = [None] * len(urls)
    snapshot_at: list[float | None] = [None] * len(urls)
    errors: list[str] = []

    async def open_one(i: int) -> None:
        async with gate:
            try:
                ws = await connect(
                    urls[i],
                    open_timeout=open_timeout,
                    ping_interval=None,  # the server pings; this side only answers
                    close_timeout=5,
                    max_size=None,
                )
            except Exception as exc:
                errors.append(f"connect: {type(exc).__name__}: {exc}")
                return
            conns[i] = ws
            try:
                first = json.loads(await asyncio.wait_for(ws.recv(), open_timeout))
            except Exception as exc:
                errors.append(f"snapshot: {type(exc).__name__}: {exc}")
                return
            if first.get("type") != "snapshot":
                errors.append(f"first message: {str(first)[:200]}")
                return
            snapshot_at[i] = time.time()

    finals: dict[str, dict[str, Any]] = {}

    async def final_event(i: int) -> None:
        async for raw in conns[i]:
            received = time.time()
            msg = json.loads(raw)
            if msg.get("type") == "event" and msg["event"] in (
                "succeeded",
                "failed",
                "cancelled",
            ):
                finals[msg["job"]["id"]] = {"event": msg["event"], "at": received}
                return

    say("armed", {})
    await command()  # go
    go = time.time()
    cpu0 = time.process_time()
    await asyncio.gather(*(open_one(i) for i in range(len(urls))))
    got = [t for t in snapshot_at if t is not None]
    say(
        "ready",
        {
            "go": go,
            "ok": len(got),
            "errors": len(errors),
            "error_samples": sorted(set(errors))[:5],
            "snapshot_after": [t - go for t in got],
            "last_snapshot": max(got, default=go),
            "cpu": time.process_time() - cpu0,
        },
    )
    if spec.get("until_final_event"):
        watched = [i for i, t in enumerate(snapshot_at) if t is not None]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(final_event(i) for i in watched)),
                spec.get("event_timeout", 300),
            )
        say("done", {"finals": finals, "cpu": time.process_time() - cpu0})
    await command()  # close
    await asyncio.gather(
        *(ws.close() for ws in conns if ws is not None), return_exceptions=True
    )
    say("closed", {"cpu": time.process_time() - cpu0})


def client_main() -> int:
    raise_nofile_limit()
    spec = json.loads(sys.stdin.readline())
    asyncio.run(_client(spec))
    return 0


# Measuring -----------------------------------------------------------------------------


def _frame_key(frame: str) -> str:
    """``function (file.py:line)`` without the line."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rstrip(')').rsplit(':', 1)[0]})"


# Frames every sample passes through (event loops, thread pools, process start-up):
# they say nothing about where the time goes.
_PLUMBING = (
    "(threading.py)",
    "(concurrent/futures/",
    "(asyncio/",
    "(click/",
    "(<frozen",
    "(uvicorn/main.py)",
    "(uvicorn/server.py)",
    "(uvicorn/_compat.py)",
    "(uvicorn/__main__.py)",
    "(billiard/",
    "(celery/",
    "(asgiref/sync.py)",
    "process ",
)


class Spy:
    """py-spy on a server process while a phase measures (--py-spy): the collapsed
    stacks go to var/bench-ws/logs/<name>.txt and the hottest frames are printed."""

    enabled = False

    def __init__(self, name: str, proc: pl.Process | None, subprocesses: bool = False):
        self.name = name
        self.proc = proc
        self.subprocesses = subprocesses
        self.popen: subprocess.Popen[bytes] | None = None
        self.path = pl.LOG_DIR / f"py-spy-{name}.txt"

    def __enter__(self) -> Spy:
        if self.enabled and self.proc is not None:
            binary = Path(sys.executable).with_name("py-spy")
            self.popen = subprocess.Popen(
                [
                    str(binary),
                    "record",
                    "--pid",
                    str(self.proc.popen.pid),
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "--nonblocking",
                    "--gil",  # samples where Python runs: where the CPU goes
                    "--output",
                    str(self.path),
                    *(["--subprocesses"] if self.subprocesses else []),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            time.sleep(0.5)  # attached before the measurement starts
        return self

    def __exit__(self, *exc: object) -> None:
        if self.popen is None:
            return
        self.popen.send_signal(signal.SIGINT)  # py-spy writes its output and exits
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return
        self.report()

    def report(self, top: int = 14) -> None:
        """Inclusive share of the samples per function, busiest first (idle
        samples, where py-spy saw no Python running, are not counted)."""
        if not self.path.exists():
            return
        inclusive: dict[str, int] = {}
        total = 0
        for line in self.path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            total += n
            for key in {_frame_key(frame) for frame in stack.split(";")}:
                inclusive[key] = inclusive.get(key, 0) + n
        if not total:
            return
        print(f"    py-spy {self.name}: {total} samples, {self.path.relative_to(ROOT)}")
        busiest = sorted(inclusive.items(), key=lambda kv: -kv[1])
        shown = 0
        for key, n in busiest:
            if any(part in key for part in _PLUMBING) or n == total:
                continue
            print(f"      {n / total:5.1%}  {key}")
            shown += 1
            if shown == top:
                break


def pct(values: list[float], q: float) -> float:
    return pl.pct(values, q)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def cpu_line(meter: pl.CpuMeter, client_cpu: float, per: int, unit: str) -> str:
    """CPU each process used (per job or connection), how much of the wall time the
    web process was running, and the share of the machine others took meanwhile."""
    u = meter.used
    ours = u["web"] + u["worker"] + u["redis"] + u["client"] + client_cpu
    other = max(u["_busy"] - ours, 0.0)
    total = u["_total"] or 1.0
    wall = u["_wall"] or 1.0
    each = ", ".join(
        f"{name} {seconds / per * 1000:.2f} ms"
        for name, seconds in (
            ("web", u["web"]),
            ("worker", u["worker"]),
            ("redis", u["redis"]),
            ("clients", client_cpu),
        )
        if seconds
    )
    return (
        f"cpu per {unit}: {each}; web ran {u['web'] / wall:.0%} of the"
        f" {wall:.1f} s; meanwhile other programs took {other / total:.0%} of the"
        f" machine (steal {u['_steal'] / total:.0%})"
    )


@dataclass
class Figure:
    name: str
    value: str
    target: str = ""
    met: bool | None = None


@dataclass
class Plan:
    jobs: int
    memory_connections: int
    hold_seconds: float
    storm_connections: int
    client_procs: int
    uvicorn_args: list[str]


# Phases --------------------------------------------------------------------------------


def wait_finished(ids: list[str], s: pl.Stack) -> None:
    pl.wait_jobs(ids, s.check, timeout=300)


def phase_latency(
    cfg: pl.Config, plan: Plan, clip: Path
) -> tuple[list[Figure], list[str]]:
    """Clients watch queued jobs; then the worker starts and runs them one by one."""
    from asr.models import Transcription
    from asr.models import TranscriptionEvent

    with pl.stack(cfg) as s:
        base = start_web(s, plan.uvicorn_args)
        _, token = pl.make_token("ws-latency")
        links = submit_jobs(base, token, clip, plan.jobs)
        spec = {
            "urls": ws_urls(base, links, len(links)),
            "concurrency": PACED_CONCURRENCY,
            "until_final_event": True,
            "event_timeout": 240,
        }
        with clients([spec]) as (c,):
            c.send("go")
            ready = c.expect("ready", 120)
            if ready["errors"]:
                raise RuntimeError(f"latency clients: {ready['error_samples']}")
            with Spy("latency-web", s.web):
                worker = start_worker(s)
                wait_ready(worker)
                # From here on the worker runs jobs: its start-up is not counted.
                with pl.CpuMeter(s) as meter, Spy("latency-worker", worker, True):
                    done = c.expect("done", 300)
            c.send("close")
            c.expect("closed", 60)
    finals = done["finals"]
    ids = [job_id(link) for link in links]
    rows = dict(
        Transcription.objects.filter(pk__in=ids).values_list("id", "finished_at")
    )
    event_rows = dict(
        TranscriptionEvent.objects.filter(
            transcription_id__in=ids, kind=TranscriptionEvent.Kind.SUCCEEDED
        ).values_list("transcription_id", "created_at")
    )
    latencies, in_worker, after_event = [], [], []
    samples = []
    missing = 0
    for pk, finished_at in rows.items():
        final = finals.get(str(pk))
        if final is None or final["event"] != "succeeded" or finished_at is None:
            missing += 1
            continue
        received = dt.datetime.fromtimestamp(final["at"], dt.UTC)
        latencies.append((received - finished_at).total_seconds())
        if pk in event_rows:
            in_worker.append((event_rows[pk] - finished_at).total_seconds())
            after_event.append((received - event_rows[pk]).total_seconds())
        samples.append(
            {
                "id": str(pk),
                "finished_at": finished_at.timestamp(),
                "event_row_at": event_rows[pk].timestamp()
                if pk in event_rows
                else None,
                "received_at": final["at"],
            }
        )
    # Every sample, for a closer look (e.g. against Redis MONITOR timestamps).
    (pl.LOG_DIR / "latency-samples.json").write_text(json.dumps(samples))
    first = min(rows.values())
    last = max(rows.values())
    rate = (len(rows) - 1) / (last - first).total_seconds() if len(rows) > 1 else 0.0
    p50, p99 = pct(latencies, 50), pct(latencies, 99)
    print(
        f"  n={len(latencies)} (missing {missing}) p50 {ms(p50)} p90"
        f" {ms(pct(latencies, 90))} p99 {ms(p99)} max {ms(max(latencies))};"
        f" worker ran {rate:.0f} jobs/s\n"
        f"    finished_at -> event row written p50 {ms(pct(in_worker, 50))};"
        f" event row -> client p50 {ms(pct(after_event, 50))}"
        f" p99 {ms(pct(after_event, 99))}\n"
        f"    {cpu_line(meter, done['cpu'], len(latencies) or 1, 'job')}",
        flush=True,
    )
    return [
        Figure(
            f"push latency p50 (n={len(latencies)})",
            ms(p50),
            f"<= {ms(LATENCY_P50_TARGET)}",
            p50 <= LATENCY_P50_TARGET,
        ),
        Figure(
            f"push latency p99 (n={len(latencies)})",
            ms(p99),
            f"<= {ms(LATENCY_P99_TARGET)}",
            p99 <= LATENCY_P99_TARGET,
        ),
        Figure(
            "latency samples missing",
            str(missing),
            "0",
            missing == 0,
        ),
    ], links


def prepare_jobs(cfg: pl.Config, plan: Plan, clip: Path) -> list[str]:
    """Finished jobs to connect to, when the latency phase did not make them."""
    with pl.stack(cfg) as s:
        base = start_web(s, plan.uvicorn_args)
        _, token = pl.make_token("ws-jobs")
        links = submit_jobs(base, token, clip, plan.jobs)
        start_worker(s)
        wait_finished([job_id(link) for link in links], s)
    return links


def phase_memory(cfg: pl.Config, plan: Plan, links: list[str]) -> list[Figure]:
    """RSS of the web process before and after N idle WebSockets."""
    n = plan.memory_connections
    with pl.stack(cfg) as s:
        base = start_web(s, plan.uvicorn_args)
        open_and_close(ws_urls(base, links, WARM_UP_CONNECTIONS))
        time.sleep(1.0)
        before = web_rss(s)
        spec = {"urls": ws_urls(base, links, n), "concurrency": PACED_CONCURRENCY}
        with clients([spec]) as (c,):
            with Spy("memory-web", s.web), pl.CpuMeter(s) as meter:
                c.send("go")
                ready = c.expect("ready", 300)
            opened = web_rss(s)
            samples = []
            end = time.monotonic() + plan.hold_seconds
            while time.monotonic() < end:
                samples.append(web_rss(s))
                time.sleep(0.25)
            held = web_rss(s)
            c.send("close")
            c.expect("closed", 120)
        time.sleep(1.0)
        after_close = web_rss(s)
        s.check()
    extra_mb = (held - before) / 2**20
    ok = ready["ok"]
    print(
        f"  {ok} of {n} connections held (errors {ready['errors']}), opened in"
        f" {max(ready['snapshot_after'], default=0):.1f} s\n"
        f"    RSS before {before / 2**20:.1f} MB, all open {opened / 2**20:.1f} MB,"
        f" after {plan.hold_seconds:.0f} s idle {held / 2**20:.1f} MB (peak"
        f" {max(samples, default=held) / 2**20:.1f} MB), after closing"
        f" {after_close / 2**20:.1f} MB: {extra_mb:.1f} MB extra,"
        f" {(held - before) / max(ok, 1) / 1024:.0f} KB per connection\n"
        f"    {cpu_line(meter, ready['cpu'], n, 'connection')}",
        flush=True,
    )
    for sample in ready["error_samples"]:
        print(f"    error: {sample}")
    return [
        Figure(
            f"web RSS with {n} idle WebSockets",
            f"+{extra_mb:.1f} MB ({before / 2**20:.0f} -> {held / 2**20:.0f} MB)",
            f"<= +{MEMORY_TARGET_MB:.0f} MB",
            extra_mb <= MEMORY_TARGET_MB and ready["errors"] == 0,
        )
    ]


def phase_storm(cfg: pl.Config, plan: Plan, links: list[str]) -> list[Figure]:
    """N clients open their WebSocket at once against a freshly started web process."""
    n = plan.storm_connections
    procs = plan.client_procs
    with pl.stack(cfg) as s:
        base = start_web(s, plan.uvicorn_args)
        open_and_close(ws_urls(base, links, WARM_UP_CONNECTIONS))
        urls = ws_urls(base, links, n)
        specs = [
            {"urls": urls[k::procs], "concurrency": None, "open_timeout": 120}
            for k in range(procs)
        ]
        with clients(specs) as cs:
            rss0 = web_rss(s)
            with Spy("storm-web", s.web), pl.CpuMeter(s) as meter:
                go = time.time()
                for c in cs:
                    c.send("go")
                readies = [c.expect("ready", 300) for c in cs]
            rss1 = web_rss(s)
            for c in cs:
                c.send("close")
            for c in cs:
                c.expect("closed", 120)
        s.check()
    ok = sum(r["ok"] for r in readies)
    errors = sum(r["errors"] for r in readies)
    after = [
        go_delta + r["go"] - go for r in readies for go_delta in r["snapshot_after"]
    ]
    wall = max(r["last_snapshot"] for r in readies) - go
    print(
        f"  {ok} of {n} hold their snapshot {wall:.1f} s after the start"
        f" ({procs} client process(es)); errors {errors}\n"
        f"    snapshot after p50 {pct(after, 50):.2f} s p90 {pct(after, 90):.2f} s"
        f" p99 {pct(after, 99):.2f} s; web RSS {rss0 / 2**20:.0f} ->"
        f" {rss1 / 2**20:.0f} MB\n"
        f"    {cpu_line(meter, sum(r['cpu'] for r in readies), n, 'connection')}",
        flush=True,
    )
    for r in readies:
        for sample in r["error_samples"]:
            print(f"    error: {sample}")
    return [
        Figure(
            f"reconnect storm, {n} at once: all snapshots",
            f"{wall:.1f} s",
            f"<= {STORM_TARGET_SECONDS:.0f} s",
            wall <= STORM_TARGET_SECONDS and ok == n,
        ),
        Figure("reconnect storm errors", str(errors), "0", errors == 0),
    ]


# Main ----------------------------------------------------------------------------------


def print_table(
    plan: Plan,
    figures: list[Figure],
    started: float,
    nofile: tuple[int, int],
    redis: str,
    what_if: list[str],
) -> None:
    print()
    print("=" * 88)
    load1, load5, _ = os.getloadavg()
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, Python"
        f" {platform.python_version()}, load average now {load1:.1f} / {load5:.1f}"
    )
    print(f"database: SQLite {(WS_DIR / 'db.sqlite3').relative_to(ROOT)} (fresh)")
    print(f"redis: {redis} (flushed at start and at the end)")
    print(
        "web: uvicorn kikipounamu.asgi:application --workers 1 --no-access-log "
        + " ".join(plan.uvicorn_args)
        + f" (RLIMIT_NOFILE {nofile[0]})"
    )
    print(
        "worker: celery worker -Q asr -P prefork -c 1 -l info, synthetic engine rtf 0"
    )
    print(
        f"clients: `websockets` asyncio client, permessage-deflate offered;"
        f" storm from {plan.client_procs} process(es)"
    )
    if what_if:
        print(
            f"WHAT-IF CHANGES ACTIVE in the servers: {', '.join(what_if)}"
            " -- these are not the project's figures"
        )
    print("-" * 88)
    width = max(len(f.name) for f in figures) + 2
    value_width = max(len(f.value) for f in figures) + 2
    print(f"{'figure':<{width}}{'value':<{value_width}}{'target':<14}met")
    for f in figures:
        met = "" if f.met is None else ("yes" if f.met else "NO")
        print(f"{f.name:<{width}}{f.value:<{value_width}}{f.target:<14}{met}")
    print("-" * 88)
    print(f"total run time {time.monotonic() - started:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a smaller run")
    parser.add_argument("--only", choices=PHASES, action="append", help="repeatable")
    parser.add_argument(
        "--client-procs", type=int, default=2, help="client processes of the storm"
    )
    parser.add_argument(
        "--uvicorn-arg",
        action="append",
        default=[],
        help="an extra uvicorn flag, e.g. --uvicorn-arg=--ws=wsproto (repeatable)",
    )
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="profile the web process (and the worker) while each phase measures",
    )
    parser.add_argument(
        "--what-if",
        default="",
        help="comma-separated changes to try in the servers"
        f" (bench/ws_whatif_settings.py): {', '.join(WHAT_IFS)}",
    )
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client_main()
    Spy.enabled = args.py_spy
    what_if = [w for w in args.what_if.split(",") if w]
    if unknown := set(what_if) - set(WHAT_IFS):
        parser.error(f"unknown --what-if: {', '.join(sorted(unknown))}")
    sizes = QUICK if args.quick else FULL
    plan = Plan(
        jobs=int(sizes["jobs"]),
        memory_connections=int(sizes["memory_connections"]),
        hold_seconds=float(sizes["hold_seconds"]),
        storm_connections=int(sizes["storm_connections"]),
        client_procs=args.client_procs,
        uvicorn_args=args.uvicorn_arg,
    )
    started = time.monotonic()
    # SIGTERM ends the run as Ctrl-C does: the finally blocks stop every child. (SIGINT
    # too where the shell started us with it ignored, as it does background jobs.)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    nofile = raise_nofile_limit()
    needed = max(plan.memory_connections, plan.storm_connections) + 256
    if nofile[0] < needed:
        print(f"warning: RLIMIT_NOFILE {nofile[0]} < {needed} needed", file=sys.stderr)
    redis_kind = configure_environment()
    if what_if:
        os.environ["DJANGO_SETTINGS_MODULE"] = "bench.ws_whatif_settings"
        os.environ["KIKI_WS_WHAT_IF"] = ",".join(what_if)
    pl.setup_django()
    from django.conf import settings

    if redis_kind == "given" and pl.redis_client().dbsize():
        print(
            f"{settings.REDIS_URL} is not empty: this bench flushes its database, so"
            " it runs only on an empty one",
            file=sys.stderr,
        )
        return 2
    redis = settings.REDIS_URL
    pl.redis_client().flushdb()
    cfg = pl.Config(
        web_workers=1,
        worker_pool="prefork",
        worker_concurrency=1,
        worker_log_level="info",
        what_if=[],
    )
    phases = args.only or list(PHASES)
    clip = wav_clip()
    figures: list[Figure] = []
    try:
        links: list[str] = []
        if "latency" in phases:
            print("[latency]", flush=True)
            found, links = phase_latency(cfg, plan, clip)
            figures += found
        elif phases:
            links = prepare_jobs(cfg, plan, clip)
        if "memory" in phases:
            print("[memory]", flush=True)
            figures += phase_memory(cfg, plan, links)
        if "storm" in phases:
            print("[storm]", flush=True)
            figures += phase_storm(cfg, plan, links)
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    finally:
        teardown()
    print_table(plan, figures, started, nofile, redis, what_if)
    return 0


if __name__ == "__main__":
    sys.exit(main())
