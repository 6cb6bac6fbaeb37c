"""Benchmark of the OpenAI-compatible door: real uvicorn, real Celery worker, real Redis.

Run from the project root with the virtualenv:

    .venv/bin/python bench/openai_door.py                  # about 2 minutes
    .venv/bin/python bench/openai_door.py --quick          # under a minute
    .venv/bin/python bench/openai_door.py --only hold --waiting 500
    .venv/bin/python bench/openai_door.py --engine whisper # tiny.en, not synthetic

It sets up its own world and removes it at the end, as bench/pipeline.py does (whose
helpers it uses), under var/bench-openai/: a fresh SQLite file (or DATABASE_URL if set),
a Redis server of its own, its own media; the processes' logs stay in
var/bench-openai/logs/. One web process (uvicorn, one worker process) with the
limits that protect a real server lifted (rate limits, backpressure).

Figures:
  added  a short clip's time from request to answer through the door
         (POST /v1/audio/transcriptions, which answers when its job has finished)
         against submitting through the REST API and polling the job
         (POST /api/v1/transcriptions, then GET /api/v1/transcriptions/<id> every
         --poll-ms until it has finished), one job at a time, the two alternating;
         p50 of each and the difference (issue 16's target: the door adds <= 10 ms
         at p50), and how long after the job's finished_at each client knew. By
         default the synthetic engine at rtf 0, so that the figures are the door's
         and the pipeline's, not whisper's run-to-run spread.
  hold   N requests waiting at once on the one web process: the worker is stopped,
         N requests are sent, and once all are waiting, the web process's threads
         (psutil) and database connections (SQLite: its open handles of the database
         file; PostgreSQL: its sockets to the server, and pg_stat_activity's rows
         for the database, every client's) before and while they wait (issue 16's
         target: no growth); then a worker starts and every request must get its
         transcript.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder is first on sys.path: put the project root there.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

from bench import pipeline as pl  # noqa: E402

PHASES = ("added", "hold")
ADDED_TARGET = 0.010
FULL = {"pairs": 60, "waiting": 200}
QUICK = {"pairs": 20, "waiting": 200}
FINISHED = ("succeeded", "failed", "cancelled")


def wait_ready(worker: pl.Process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while " ready." not in worker.log_path.read_text(errors="replace"):
        worker.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker not ready:\n{worker.tail()}")
        time.sleep(0.1)


def engine_env(engine: str) -> dict[str, str]:
    if engine == "synthetic":
        return {"ASR_ENGINE": "synthetic", "ASR_SYNTHETIC_RTF": "0"}
    return {"ASR_ENGINE": "whisper"}


def files(clip: Path) -> dict[str, Any]:
    return {"file": (clip.name, clip.read_bytes(), "audio/wav")}


# added ---------------------------------------------------------------------------------


@dataclass
class Timing:
    total: float  # request sent -> transcript in hand
    after_finish: float  # the job's finished_at -> transcript in hand
    job_id: str


def finished_at(job_id: str) -> float:
    from asr.models import Transcription

    job = Transcription.objects.get(pk=job_id)
    assert job.status == "succeeded", (job.status, job.error_code, job.error_message)
    assert job.finished_at is not None
    return job.finished_at.timestamp()


def through_door(client: Any, base: str, token: str, clip: Path) -> Timing:
    started = time.monotonic()
    response = client.post(
        f"{base}/v1/audio/transcriptions",
        headers={"Authorization": f"Bearer {token}"},
        data={"model": "whisper-1"},
        files=files(clip),
    )
    done_wall, done = time.time(), time.monotonic()
    response.raise_for_status()
    job_id = response.headers["x-job-id"]
    return Timing(done - started, done_wall - finished_at(job_id), job_id)


def through_api(client: Any, base: str, token: str, clip: Path, poll: float) -> Timing:
    headers = {"Authorization": f"Token {token}"}
    started = time.monotonic()
    response = client.post(
        f"{base}/api/v1/transcriptions", headers=headers, files=files(clip)
    )
    response.raise_for_status()
    job_id = response.json()["id"]
    while True:
        job = client.get(f"{base}/api/v1/transcriptions/{job_id}", headers=headers)
        job.raise_for_status()
        if job.json()["status"] in FINISHED:
            break
        time.sleep(poll)
    done_wall, done = time.time(), time.monotonic()
    return Timing(done - started, done_wall - finished_at(job_id), job_id)


def phase_added(
    cfg: pl.Config, plan: dict[str, Any], args: argparse.Namespace
) -> list[pl.Figure]:
    import httpx

    clip = pl.short_clip()
    poll = args.poll_ms / 1000
    door: list[Timing] = []
    api: list[Timing] = []
    with pl.stack(cfg) as s:
        base = s.start_web()
        wait_ready(s.start_worker(**engine_env(args.engine)))
        _, token = pl.make_token("added")
        with httpx.Client(timeout=120) as client:
            for _ in range(5):  # imports, connections, the model's first call
                through_door(client, base, token, clip)
                through_api(client, base, token, clip, poll)
            with pl.CpuMeter(s) as meter:
                for i in range(plan["pairs"]):
                    # Alternating which goes first: neither always gets a warm cache.
                    order = [True, False] if i % 2 == 0 else [False, True]
                    for door_first in order:
                        if door_first:
                            door.append(through_door(client, base, token, clip))
                        else:
                            api.append(through_api(client, base, token, clip, poll))
            s.check()
    door_p50 = pl.pct([t.total for t in door], 50)
    api_p50 = pl.pct([t.total for t in api], 50)
    added = door_p50 - api_p50
    pairs = [d.total - a.total for d, a in zip(door, api, strict=True)]
    print(
        f"  {args.engine} engine, {pl.clip_seconds(clip):.1f} s clip, {len(door)} pairs,"
        f" polling every {args.poll_ms:g} ms\n"
        f"    door       p50 {pl.ms(door_p50)}  p90 {pl.ms(pl.pct([t.total for t in door], 90))}"
        f"  (finished_at -> answer p50 {pl.ms(pl.pct([t.after_finish for t in door], 50))})\n"
        f"    api + poll p50 {pl.ms(api_p50)}  p90 {pl.ms(pl.pct([t.total for t in api], 90))}"
        f"  (finished_at -> poll saw it p50 {pl.ms(pl.pct([t.after_finish for t in api], 50))})\n"
        f"    door - api: p50s {pl.ms(added)}, median of the pairs' differences"
        f" {pl.ms(statistics.median(pairs))}\n"
        f"    {meter.report(2 * len(door))[0]}",
        flush=True,
    )
    return [
        pl.Figure(
            "door's added time, p50 (door - api+poll)",
            pl.ms(added),
            f"<= {pl.ms(ADDED_TARGET)}",
            added <= ADDED_TARGET,
        ),
        pl.Figure(
            "  door p50 / api+poll p50",
            f"{pl.ms(door_p50)} / {pl.ms(api_p50)}",
        ),
    ]


# hold ----------------------------------------------------------------------------------


def database_connections(web_pid: int) -> str:
    """The web process's database connections, as the database's kind allows."""
    import psutil
    from django.conf import settings
    from django.db import connection

    web = psutil.Process(web_pid)
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        name = str(Path(db["NAME"]).resolve())
        handles = sum(1 for f in web.open_files() if f.path == name)
        return f"{handles} (open handles of {Path(name).name})"
    port = int(db.get("PORT") or 5432)
    sockets = sum(
        1 for c in web.net_connections(kind="inet") if c.raddr and c.raddr.port == port
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        )
        (rows,) = cursor.fetchone()
    return f"{sockets} (sockets to PostgreSQL; pg_stat_activity, every client: {rows})"


def web_state(web_pid: int) -> tuple[int, str, float]:
    import psutil

    web = psutil.Process(web_pid)
    return (
        web.num_threads(),
        database_connections(web_pid),
        web.memory_info().rss / 2**20,
    )


async def hold_requests(
    base: str, token: str, clip: Path, count: int
) -> list[tuple[int, float]]:
    """``count`` door requests at once; each one's status and seconds to answer."""
    import httpx

    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=0)
    body = clip.read_bytes()
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def one() -> tuple[int, float]:
            started = time.monotonic()
            response = await client.post(
                f"{base}/v1/audio/transcriptions",
                headers={"Authorization": f"Bearer {token}"},
                data={"model": "whisper-1", "response_format": "text"},
                files={"file": (clip.name, body, "audio/wav")},
            )
            return response.status_code, time.monotonic() - started

        return await asyncio.gather(*(one() for _ in range(count)))


def phase_hold(
    cfg: pl.Config, plan: dict[str, Any], args: argparse.Namespace
) -> list[pl.Figure]:
    import threading

    from asr.models import Transcription

    clip = pl.short_clip()
    count = plan["waiting"]
    figures = []
    with pl.stack(cfg) as s:
        base = s.start_web()
        assert s.web is not None
        web_pid = s.web.popen.pid
        wait_ready(s.start_worker(**engine_env(args.engine)))
        user, token = pl.make_token("hold")
        # Every request thread started and connected, as after any busy minute.
        asyncio.run(hold_requests(base, token, clip, 3 * cfg_threads()))
        s.stop_workers()
        time.sleep(1)
        before = web_state(web_pid)
        done_jobs = Transcription.objects.filter(owner=user).count()

        results: list[tuple[int, float]] = []
        sender = threading.Thread(
            target=lambda: results.extend(
                asyncio.run(hold_requests(base, token, clip, count))
            )
        )
        started = time.monotonic()
        sender.start()
        # All accepted (their jobs exist) and waiting.
        while Transcription.objects.filter(owner=user).count() < done_jobs + count:
            s.check()
            if time.monotonic() - started > 120:
                raise TimeoutError("the requests were not all accepted")
            time.sleep(0.2)
        accepted = time.monotonic() - started
        samples = []
        for _ in range(5):  # over a recheck interval and more
            time.sleep(1.2)
            samples.append(web_state(web_pid))
        during = max(samples, key=lambda state: state[0])
        restarted = time.monotonic()
        wait_ready(s.start_worker(**engine_env(args.engine)))
        sender.join(600)
        drained = time.monotonic() - restarted
        after = web_state(web_pid)
        s.check()
    ok = sum(1 for status, _ in results if status == 200)
    grew = during[0] > before[0] or during[1] != before[1]
    print(
        f"  {count} requests waiting on one web process (all accepted in"
        f" {accepted:.1f} s)\n"
        f"    before:  {before[0]} threads, database connections {before[1]},"
        f" RSS {before[2]:.0f} MiB\n"
        f"    waiting: {during[0]} threads, database connections {during[1]},"
        f" RSS {during[2]:.0f} MiB (the most threads of 5 samples over 6 s)\n"
        f"    after a worker started: {ok}/{count} answered 200 within"
        f" {drained:.1f} s; then {after[0]} threads, database connections"
        f" {after[1]}",
        flush=True,
    )
    figures.append(
        pl.Figure(
            f"threads / db connections, before -> {count} waiting",
            f"{before[0]} -> {during[0]} / {before[1].split()[0]} -> {during[1].split()[0]}",
            "no growth",
            not grew,
        )
    )
    figures.append(
        pl.Figure("  answered once a worker ran", f"{ok}/{count}", "all", ok == count)
    )
    return figures


def cfg_threads() -> int:
    from django.conf import settings

    return int(settings.WEB_MAX_CONCURRENT_REQUESTS)


# Main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a smaller run")
    parser.add_argument("--only", choices=PHASES, action="append", help="repeatable")
    parser.add_argument(
        "--engine", choices=("synthetic", "whisper"), default="synthetic"
    )
    parser.add_argument("--poll-ms", type=float, default=10.0, help="the API's polling")
    parser.add_argument(
        "--waiting", type=int, help="requests held at once (default 200)"
    )
    args = parser.parse_args()
    plan = dict(QUICK if args.quick else FULL)
    if args.waiting:
        plan["waiting"] = args.waiting
    pl.use_bench_dir(ROOT / "var" / "bench-openai")
    cfg = pl.Config(
        web_workers=1,
        worker_pool="prefork",
        worker_concurrency=1,
        worker_log_level="warning",
        what_if=[],
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with pl.own_redis() as cfg.redis:
        cfg.database = pl.configure_environment()
        pl.setup_django()
        pl.redis_client().flushdb()
        phases = {"added": phase_added, "hold": phase_hold}
        figures: list[pl.Figure] = []
        try:
            for name in args.only or list(PHASES):
                print(f"\n== {name}", flush=True)
                figures += phases[name](cfg, plan, args)
        finally:
            pl.remove_bench_users()
            pl.redis_client().flushdb()
    print(f"\nweb: 1 uvicorn process; database: {cfg.database}; redis: {cfg.redis}")
    width = max(len(f.name) for f in figures)
    for f in figures:
        verdict = "" if f.met is None else ("  met" if f.met else "  MISSED")
        target = f"  (target {f.target})" if f.target else ""
        print(f"  {f.name:<{width}}  {f.value}{target}{verdict}")
    return 0 if all(f.met is not False for f in figures) else 1


if __name__ == "__main__":
    raise SystemExit(main())
