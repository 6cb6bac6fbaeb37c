"""Benchmark of live dictation (/ws/live/): real uvicorn, real Celery live workers,
real Redis, real WebSocket clients streaming espeak-ng speech of known text, paced
as a microphone sends it; and WhisperLive beside it on the same clips.

Run from the project root with the virtualenv (`make bench-live` runs it all):

    .venv/bin/python bench/live.py                      # every phase, ~15 minutes
    .venv/bin/python bench/live.py --phases whisper --seconds 15      # a short look
    .venv/bin/python bench/live.py --phases backlog --backlog-jobs 20
    .venv/bin/python bench/live.py --phases synthetic --synthetic-streams 100 \\
        --synthetic-seconds 20
    .venv/bin/python bench/live.py --phases whisperlive --max-streams 8
    .venv/bin/python bench/live.py --phases whisper --speed 2  # twice real time
    .venv/bin/python bench/live.py --json var/bench-live/figures.json
    .venv/bin/python bench/live.py --phases synthetic --what-if livedispatch
    .venv/bin/python bench/live.py --phases whisper --split-live  # two live workers

Phases (``--phases``, comma-separated; all by default, in this order):
  whisper      --streams (4) streams of --seconds (40) of speech at once (starts
               spread over 3 s, bench/live_clips.py), whisper tiny.en on one live
               worker (-Q live,live_partial -c 1, ASR_THREADS=--threads); then the
               same clips through the file API (an asr worker, whisper) for the WER
               the file path gets on the same audio
  backlog      the same streams while --backlog-jobs (100) file jobs (the same clips)
               wait in the `asr` queue and an asr worker runs them on the same cores
  synthetic    --synthetic-streams (500) streams of --synthetic-seconds (60) with the
               synthetic engine (instant) on the live worker: what the web and the
               pipeline cost per stream, and whether any connection or final is lost
  whisperlive  WhisperLive (bench/whisperlive.py, in a virtualenv of its own) on the
               same clips at the same concurrency, the same tiny.en CTranslate2 model
               and threads; then both systems' capacity: the most streams (doubling
               from --streams, or halving if it fails) whose final p99 stays <= 2 s
               with none refused or dropped, up to --max-streams (16)

It sets up its own world under var/bench-live/ and removes it at the end (also on
Ctrl-C): a fresh SQLite file (or DATABASE_URL), a Redis server of its own (or
REDIS_URL, flushed), its own MEDIA_ROOT; process logs stay in var/bench-live/logs/.
Each phase starts ONE uvicorn process (--workers 1: its CPU and memory are one
process's) and its own workers; the clients run in --client-procs processes of their
own (asyncio + the websockets library; permessage-deflate offered as browsers do,
unless --no-deflate). The API's rate limits are lifted (100 uploads from one user);
the live door's limits (LIVE_MAX_STREAMS, LIVE_MAX_QUEUE_DEPTH) are the defaults.

Figures, per sentence (utterance) of every stream, scored by bench/whisperlive.py's
``score`` for both systems, so the two are measured by one rule:
  final       end of speech -> final text at the client: from the moment the frame
              holding the sentence's last sound was sent (stream start + the known
              speech end, rounded up to the frame) to the arrival of the last final
              covering the sentence (time overlap); a sentence with none is
              infinitely late, and counted as a final lost
  partial     the gaps between partial messages while the sentence is being said
              (the target), and between visible changes of the text shown (a
              partial with new text, or its final: the side-by-side's, as
              WhisperLive sends no partial messages); a sentence with none counts
              its whole length as one gap
  WER         of all of a stream's finals against its sentences (tests/speech.py),
              next to the same clips' WER through the file API
  web         CPU (psutil: user + system over the phase) per stream-second of audio,
              and RSS per stream: the web's RSS while every stream is connected (the
              highest sample, every 0.25 s) minus its RSS just before they connected
              (after a warm-up), over the streams
  lost        finals lost: sentences fully sent with no final at the client at the end
  dropped     connections that closed other than with 1000 after ``end``, or never
              got ``end``, or could not connect
Also: where the time of a final goes (end of speech -> the web's speech_stopped,
which waits LIVE_ENDPOINT_SILENCE_MS of silence; speech_stopped -> final: queue,
engine, store, push), the engine's seconds per final (LiveUtterance rows), Redis
memory per stream, each process's CPU, the clients' pacing lag, and how much of the
machine other programs used meanwhile. Targets are for a 2-core machine and real
time (--speed 1); at another speed the figures are printed but not judged.

--what-if NAME,... loads bench/whatif/sitecustomize.py into the servers, to measure a
change proposed for the project without editing it (livedispatch: no DB hop per
audio frame; livepriority: finals before partials; executor: a smaller thread
pool; looplag: the web's event loop lag in its log); the figures are then labelled
as such and are not the project's.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ comes first on the path, and bench/websockets.py would
# shadow the websockets library the clients speak through.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import wave  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from dataclasses import field  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import websockets  # noqa: E402

from bench import live_clips  # noqa: E402
from bench import pipeline as pl  # noqa: E402
from bench import whisperlive as wl  # noqa: E402
from tests.live_client import ws_url  # noqa: E402
from tests.speech import word_error_rate  # noqa: E402

LIVE_DIR = ROOT / "var" / "bench-live"
PHASES = ("whisper", "backlog", "synthetic", "whisperlive")
# Proposed changes to measure before making them (bench/whatif/sitecustomize.py).
WHAT_IFS = ("livedispatch", "livepriority", "executor", "looplag", *pl.WHAT_IFS)
RATE = live_clips.SAMPLE_RATE

# Targets (issue 15, item 7), for a 2-core machine at real time.
FINAL_P50_TARGET = 1.0
FINAL_P99_TARGET = 2.0
PARTIAL_GAP_P95_TARGET = 1.5
BACKLOG_FINAL_P99_TARGET = 2.5
RSS_PER_STREAM_TARGET = 250 * 1024
WER_VS_FILE_TARGET = 0.03
WER_VS_WHISPERLIVE_TARGET = 0.02
CAPACITY_RATIO_TARGET = 2.0
CAPACITY_P99_LIMIT = wl.P99_LIMIT_S

# How long a client waits for ``end`` after its stop: the session's last final and
# its finish (the audio stored) come first.
END_TIMEOUT = 120.0
# Samples of the web's RSS and Redis's memory.
SAMPLE_SECONDS = 0.25
# Distinct clips the synthetic phase cycles through (the engine does not listen; the
# pauses, and so the finals, are what matter).
SYNTHETIC_CLIPS = 16


# The client --------------------------------------------------------------------------
# Plain dicts and lists cross from the client processes: nothing of this module's
# classes has to be pickled.


async def _sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def live_stream(
    url: str,
    pcm: bytes,
    *,
    at: float,
    frame_ms: int,
    speed: float,
    deflate: bool,
) -> dict[str, Any]:
    """Stream ``pcm`` from time.monotonic() ``at``, one frame each ``frame_ms`` /
    ``speed`` (a frame leaves once its audio has been heard; ``speed`` 0: as fast as
    the socket takes them), then stop, and read until the server closes."""
    frame = RATE * frame_ms // 1000 * 2
    out: dict[str, Any] = {
        "sent_at": [],
        "messages": [],  # (arrival, message)
        "t0": 0.0,
        "opened_at": None,
        "ready_at": None,
        "close_code": None,
        "close_reason": "",
        "error": "",
    }
    await _sleep_until(at)
    try:
        async with websockets.connect(
            url,
            max_size=2**22,
            open_timeout=60,
            compression="deflate" if deflate else None,
            # Browsers send no pings; a client loop busy with 500 streams must not
            # close a connection for a late pong and call it the server's drop.
            ping_interval=None,
        ) as ws:
            out["opened_at"] = time.monotonic()
            await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))

            async def read() -> None:
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for raw in ws:
                        now = time.monotonic()
                        message = json.loads(raw)
                        if message.get("type") == "ready":
                            out["ready_at"] = now
                        if message.get("type") != "heartbeat":
                            out["messages"].append((now, message))

            reader = asyncio.ensure_future(read())
            t0 = out["t0"] = time.monotonic()
            seconds = frame_ms / 1000
            for k, begin in enumerate(range(0, len(pcm), frame)):
                if speed > 0:
                    await _sleep_until(t0 + (k + 1) * seconds / speed)
                if reader.done():
                    break
                await ws.send(pcm[begin : begin + frame])
                out["sent_at"].append(time.monotonic())
            if not reader.done():
                await ws.send(json.dumps({"type": "stop"}))
            try:
                await asyncio.wait_for(reader, END_TIMEOUT)
            except TimeoutError:
                out["error"] = f"no end within {END_TIMEOUT:.0f} s of stop"
            out["close_code"] = ws.close_code
            out["close_reason"] = ws.close_reason or ""
    except websockets.ConnectionClosed as exc:
        # Closed while we sent: the server's close frame says why (none: 1006).
        out["close_code"] = exc.rcvd.code if exc.rcvd else 1006
        out["close_reason"] = exc.rcvd.reason if exc.rcvd else "no close frame"
    except Exception as exc:  # a failed connection is a figure, not a crash
        out["error"] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def client_group(
    url: str,
    clips: list[bytes],
    streams: list[tuple[int, float]],
    begin_at: float,
    frame_ms: int,
    speed: float,
    deflate: bool,
) -> tuple[list[dict[str, Any]], float]:
    """One client process: ``streams`` are (clip index, start offset) pairs, all
    started from ``begin_at``; returns each stream's record and this process's CPU."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def main() -> list[dict[str, Any]]:
        return await asyncio.gather(
            *(
                live_stream(
                    url,
                    clips[clip],
                    at=begin_at + offset,
                    frame_ms=frame_ms,
                    speed=speed,
                    deflate=deflate,
                )
                for clip, offset in streams
            )
        )

    cpu = time.process_time()
    results = asyncio.run(main())
    return results, time.process_time() - cpu


def run_streams(
    url: str,
    clips: list[live_clips.Clip],
    n: int,
    *,
    frame_ms: int,
    speed: float,
    deflate: bool,
    procs: int,
) -> tuple[list[dict[str, Any]], float, float]:
    """``n`` streams, stream i playing clip i % len(clips) from start_offset(i, n),
    in ``procs`` client processes; returns the records (in stream order), the
    clients' CPU seconds and the moment the first stream was due."""
    procs = max(1, min(procs, n))
    plan = [(i % len(clips), live_clips.start_offset(i, n)) for i in range(n)]
    groups = [list(range(p, n, procs)) for p in range(procs)]
    used = sorted({c for c, _ in plan})
    pcm = {c: clips[c].pcm16 for c in used}
    records: list[dict[str, Any]] = [{} for _ in range(n)]
    cpu = 0.0
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(procs, mp_context=context) as pool:
        # Every process up (Python and its imports) before the first stream is due.
        list(pool.map(time.sleep, [0.5] * procs))
        begin_at = time.monotonic() + 1.0
        futures = []
        for group in groups:
            mine = sorted({plan[i][0] for i in group})
            index = {c: k for k, c in enumerate(mine)}
            futures.append(
                pool.submit(
                    client_group,
                    url,
                    [pcm[c] for c in mine],
                    [(index[plan[i][0]], plan[i][1]) for i in group],
                    begin_at,
                    frame_ms,
                    speed,
                    deflate,
                )
            )
        for group, future in zip(groups, futures, strict=True):
            results, used_cpu = future.result()
            cpu += used_cpu
            for i, record in zip(group, results, strict=True):
                records[i] = record
    return records, cpu, begin_at


# Scoring -----------------------------------------------------------------------------


def as_stream(
    record: dict[str, Any], clip: live_clips.Clip, frame_ms: int
) -> wl.Stream:
    """A stream of ours as bench/whisperlive.py scores a WhisperLive one: finals are
    its completed segments; a visible change is a partial with new text or a final
    that differs from the partial it replaces."""
    stream = wl.Stream(clip, RATE * frame_ms // 1000)
    stream.sent_at = list(record["sent_at"])
    shown: dict[int, str] = {}
    for at, message in record["messages"]:
        kind = message.get("type")
        if kind == "final":
            # Keyed by index, where WhisperLive's are keyed by their times.
            key = (str(message["index"]), "final")
            if key not in stream.completed:
                stream.completed[key] = wl.Segment(
                    float(message["start"]), float(message["end"]), message["text"], at
                )
            index, text = message["index"], message["text"]
        elif kind == "partial":
            index, text = message["utterance"], message["text"]
        else:
            continue
        if shown.get(index) != text:
            shown[index] = text
            stream.changes.append(at)
    if record["ready_at"] is None:
        stream.refused = record["error"] or (
            f"closed {record['close_code']} {record['close_reason']}"
        )
    return stream


def drop_reason(record: dict[str, Any]) -> str | None:
    """Why a stream counts as dropped, or None: it ended with ``end`` and 1000."""
    ended = any(m.get("type") == "end" for _, m in record["messages"])
    if record["error"]:
        return record["error"].split(":")[0]
    if record["close_code"] != 1000:
        reason = record["close_reason"][:40]
        return f"close {record['close_code']} {reason}".strip()
    if not ended:
        return "closed 1000 without end"
    return None


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def score_streams(
    records: list[dict[str, Any]],
    clips: list[live_clips.Clip],
    frame_ms: int,
    speed: float,
) -> dict[str, Any]:
    """bench/whisperlive.py's figures for our streams, and ours besides."""
    streams = [
        as_stream(r, clips[i % len(clips)], frame_ms) for i, r in enumerate(records)
    ]
    frame = RATE * frame_ms // 1000
    # Scored: the streams that sent their whole clip (the others are dropped; their
    # sentences after the drop were never said).
    whole = [
        s
        for s in streams
        if not s.refused and len(s.sent_at) * frame >= len(s.clip.pcm16) // 2
    ]
    figures = wl.score(whole) if whole else {"utterances": 0}
    lost = 0
    said = 0
    for s in streams:
        if s.refused:
            continue
        heard_until = len(s.sent_at) * frame / RATE
        for (_, end, _), (finalising, _) in zip(
            s.clip.utterances, wl.attribute(s), strict=True
        ):
            if end <= heard_until:
                said += 1
                lost += not finalising
    reasons = collections.Counter(
        reason for r in records if (reason := drop_reason(r)) is not None
    )
    # Where a final's time goes: the web's end point (speech_stopped) and after it.
    endpoint, after = [], []
    duplicates = 0
    for s, r in zip(streams, records, strict=True):
        stopped = {
            m["utterance"]: at
            for at, m in r["messages"]
            if m.get("type") == "speech_stopped"
        }
        finals = [(at, m) for at, m in r["messages"] if m.get("type") == "final"]
        duplicates += len(finals) - len({m["index"] for _, m in finals})
        heard = len(s.sent_at) * frame / RATE
        for at, m in finals:
            if m["index"] not in stopped:
                continue
            after.append(at - stopped[m["index"]])
            # The sentence this final is most of.
            overlap, end = max(
                (min(e, m["end"]) - max(b, m["start"]), e)
                for b, e, _ in s.clip.utterances
            )
            if overlap > 0 and end <= heard:
                endpoint.append(stopped[m["index"]] - s.sent_time(end))
    # The brief's own measure of partials: the gaps between partial messages while
    # a sentence is said (the text may not have changed), counted as above.
    message_gaps: list[float] = []
    scored = {id(s) for s in whole}
    for s, r in zip(streams, records, strict=True):
        if id(s) not in scored:
            continue
        partials = [at for at, m in r["messages"] if m.get("type") == "partial"]
        for start, end, _ in s.clip.utterances:
            said_from, said_to = s.sent_time(start), s.sent_time(end)
            during = [t for t in partials if said_from < t <= said_to]
            if len(during) > 1:
                message_gaps += list(np.diff(during))
            elif not during:
                message_gaps.append(said_to - said_from)
    # How late the clients sent their frames (a client short of CPU would make
    # the server look slow).
    lag = [
        sent - (r["t0"] + (k + 1) * frame_ms / 1000 / speed)
        for r in records
        for k, sent in enumerate(r["sent_at"])
        if speed > 0
    ]
    # Socket open -> ready: the session's row and Redis state made (a connect storm
    # queues these in the web's one thread for database calls).
    ready = [r["ready_at"] - r["opened_at"] for r in records if r["ready_at"]]
    return {
        **figures,
        "streams": len(records),
        "ready_p50_s": pct(ready, 50),
        "ready_p99_s": pct(ready, 99),
        "sessions": [
            m["session"]
            for r in records
            for _, m in r["messages"]
            if m.get("type") == "ready"
        ],
        "partial_message_gap_p95_s": pct(message_gaps, 95),
        "finals_lost": lost,
        "sentences_said": said,
        "finals_duplicated": duplicates,
        "dropped": sum(reasons.values()),
        "dropped_reasons": dict(reasons),
        "stream_seconds": sum(len(s.sent_at) for s in streams) * frame / RATE,
        "endpoint_p50_s": pct(endpoint, 50),
        "endpoint_p99_s": pct(endpoint, 99),
        "after_endpoint_p50_s": pct(after, 50),
        "after_endpoint_p99_s": pct(after, 99),
        "ready_last": max((r["ready_at"] for r in records if r["ready_at"]), default=0),
        "sending_first_end": min(
            (r["sent_at"][-1] for r in records if r["sent_at"]), default=0
        ),
        "pacing_lag_p99_s": pct(lag, 99),
        "pacing_lag_max_s": max(lag, default=math.nan),
    }


# Measuring a phase -------------------------------------------------------------------


class Sampler(threading.Thread):
    """The web's RSS and Redis's used memory every SAMPLE_SECONDS."""

    def __init__(self, web_pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.web = psutil.Process(web_pid)
        self.samples: list[tuple[float, int, int]] = []
        self._done = threading.Event()

    def sample(self) -> tuple[float, int, int]:
        redis_memory = int(pl.redis_client().info("memory")["used_memory"])
        return time.monotonic(), self.web.memory_info().rss, redis_memory

    def run(self) -> None:
        while not self._done.wait(SAMPLE_SECONDS):
            with contextlib.suppress(Exception):
                self.samples.append(self.sample())

    def stop(self) -> None:
        self._done.set()
        self.join()


def measure(
    s: pl.Stack,
    url: str,
    clips: list[live_clips.Clip],
    n: int,
    opts: argparse.Namespace,
    procs: int,
) -> dict[str, Any]:
    """``n`` streams against the running stack, and every figure of them."""
    import psutil

    assert s.web is not None
    web = psutil.Process(s.web.popen.pid)
    sampler = Sampler(web.pid)
    # What the web costs with no stream at all (its timers, the channel layer's
    # polls): at a few streams, most of its CPU per stream-second.
    idle = sum(web.cpu_times()[:2])
    time.sleep(2.0)
    idle = (sum(web.cpu_times()[:2]) - idle) / 2.0
    baseline = sampler.sample()
    sampler.start()
    web_cpu = sum(web.cpu_times()[:2])
    meter = pl.CpuMeter(s)
    with meter:
        records, client_cpu, begin_at = run_streams(
            url,
            clips,
            n,
            frame_ms=opts.frame_ms,
            speed=opts.speed,
            deflate=opts.deflate,
            procs=procs,
        )
    web_cpu = sum(web.cpu_times()[:2]) - web_cpu
    sampler.stop()
    f = score_streams(records, clips, opts.frame_ms, opts.speed)
    # "While all are connected": from the last ready to the first stream's last frame
    # (a short run may have no such moment: then the whole phase).
    window = [
        x for x in sampler.samples if f["ready_last"] <= x[0] <= f["sending_first_end"]
    ] or sampler.samples
    rss_peak = max((x[1] for x in window), default=baseline[1])
    redis_peak = max((x[2] for x in sampler.samples), default=baseline[2])
    u = meter.used
    other = max(
        u["_busy"] - u["web"] - u["worker"] - u["redis"] - u["client"] - client_cpu, 0
    )
    f.update(
        {
            "web_cpu_s": web_cpu,
            "web_cpu_per_stream_s": web_cpu / f["stream_seconds"]
            if f["stream_seconds"]
            else math.nan,
            "web_cpu_share": web_cpu / u["_wall"],
            "web_idle_share": idle,
            "rss_before": baseline[1],
            "rss_peak": rss_peak,
            "rss_per_stream": (rss_peak - baseline[1]) / n,
            "rss_window_samples": len(window),
            "redis_per_stream": (redis_peak - baseline[2]) / n,
            "worker_cpu_per_stream_s": u["worker"] / f["stream_seconds"]
            if f["stream_seconds"]
            else math.nan,
            "redis_cpu_s": u["redis"],
            "worker_cpu_s": u["worker"],
            "client_cpu_s": client_cpu,
            "other_share": other / u["_total"] if u["_total"] else math.nan,
            "steal_share": u["_steal"] / u["_total"] if u["_total"] else math.nan,
            "wall_s": u["_wall"],
            "began_at": begin_at,
        }
    )
    f.update(stored_finals(f["sessions"]))
    del f["sessions"]
    return f


def others_cores(f: dict[str, Any]) -> float:
    """Cores other programs took during a measurement of ours."""
    return f["other_share"] * (os.cpu_count() or 1)


def when_quiet(
    opts: argparse.Namespace, run: Callable[[], dict[str, Any]], *, again: bool = True
) -> dict[str, Any]:
    """``run()``, on a shared machine (--quiet CORES): first wait until other
    programs take at most CORES, and run again (up to --tries times, if ``again``)
    when they took more meanwhile; the least disturbed run's figures. The rule
    bench/whisperlive.py applies to WhisperLive's runs."""
    if opts.quiet is None:
        return run()
    runs: list[dict[str, Any]] = []
    for _ in range(opts.tries if again else 1):
        wl.wait_for_quiet(opts.quiet)
        runs.append(run())
        if others_cores(runs[-1]) <= opts.quiet:
            break
        print(
            f"  (other programs took {others_cores(runs[-1]):.2f} cores; again)",
            flush=True,
        )
    return min(runs, key=others_cores)


def stored_finals(sessions: list[str]) -> dict[str, Any]:
    """What the database says of these sessions: the engine's time per final, and
    how many sessions ended as succeeded jobs."""
    from asr.models import LiveUtterance
    from asr.models import Transcription

    engine = [
        e
        for e in LiveUtterance.objects.filter(
            transcription_id__in=sessions
        ).values_list("engine_seconds", flat=True)
        if e is not None
    ]
    succeeded = Transcription.objects.filter(
        pk__in=sessions, status=Transcription.Status.SUCCEEDED
    ).count()
    return {
        "engine_p50_s": pct(engine, 50),
        "engine_p99_s": pct(engine, 99),
        "stored_finals": len(engine),
        "sessions_succeeded": succeeded,
        "sessions_started": len(sessions),
    }


# Stacks ------------------------------------------------------------------------------


def wait_ready(proc: pl.Process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while " ready." not in proc.log_path.read_text(errors="replace"):
        proc.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name} not ready:\n{proc.tail()}")
        time.sleep(0.2)


def start_live_worker(
    s: pl.Stack, opts: argparse.Namespace, *, concurrency: int = 0, **env: str
) -> None:
    """The Procfile's live worker (both live queues), or with --split-live one
    worker for finals and one for partials, so that no final waits for a partial."""
    queues = ["live", "live_partial"] if opts.split_live else ["live,live_partial"]
    procs = [
        s.start_worker(
            queues=q,
            pool="prefork",
            concurrency=concurrency or opts.live_concurrency,
            LIVE_THREADS=str(opts.live_threads),
            **env,
        )
        for q in queues
    ]
    for proc in procs:
        wait_ready(proc)


def start_asr_worker(s: pl.Stack, opts: argparse.Namespace) -> pl.Process:
    proc = s.start_worker(
        queues="asr", pool="prefork", concurrency=1, ASR_THREADS=str(opts.threads)
    )
    wait_ready(proc)
    return proc


def warm_up(
    url: str, clips: list[live_clips.Clip], streams: int, opts: argparse.Namespace
) -> None:
    """A few short streams, as fast as the sockets take them, each to its end: the
    workers' models loaded and the web's first-use costs paid before measuring."""
    short = [
        live_clips.Clip(c.pcm16[: int(min(c.seconds, 6.0) * RATE) * 2], [])
        for c in clips
    ]
    records, _, _ = run_streams(
        url,
        short,
        streams,
        frame_ms=opts.frame_ms,
        speed=0,
        deflate=opts.deflate,
        procs=1,
    )
    bad = [drop_reason(r) for r in records if drop_reason(r)]
    if bad:
        raise RuntimeError(f"warm-up streams failed: {bad}")


def write_wavs(clips: list[live_clips.Clip]) -> list[Path]:
    pl.CLIP_DIR.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, clip in enumerate(clips):
        path = pl.CLIP_DIR / f"live-{i}.wav"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(RATE)
            out.writeframes(clip.pcm16)
        paths.append(path)
    return paths


def file_api_wer(
    base: str, clips: list[live_clips.Clip], s: pl.Stack
) -> tuple[float, list[str]]:
    """The clips through the file API (one job each, the asr worker): their WER
    against the sentences, and the texts."""
    from asr.models import Transcription

    # A user of their own: pl.wait_jobs counts the jobs of the first one's owner.
    _, token = pl.make_token("file-wer")
    r = pl.submit_and_wait(base, token, write_wavs(clips), s)
    texts = [Transcription.objects.get(pk=i).text for i in r.job_ids]
    return word_error_rate([c.reference for c in clips], texts), texts


def asr_queue_depth() -> int:
    from asr.ops import redis_state

    return redis_state.queue_depths(("asr",))["asr"]


def purge_asr_queue() -> int:
    """Drop the file jobs still waiting (the backlog's), so that no later phase's
    worker runs them; kombu's purge knows the transport's key prefix and priority
    lists."""
    from kikipounamu.celery import app

    with app.connection_for_write() as conn:
        return int(conn.default_channel.queue_purge("asr") or 0)


# Phases ------------------------------------------------------------------------------


@dataclass
class Figure:
    name: str
    value: str
    target: str = ""
    met: bool | None = None


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(
        self, name: str, value: str, target: str = "", met: bool | None = None
    ) -> None:
        self.figures.append(Figure(name, value, target, met))


def judged(opts: argparse.Namespace, met: bool) -> bool | None:
    """A target is judged at real time only."""
    return met if opts.speed == 1 else None


def secs(value: float) -> str:
    return (
        "-" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.2f} s")
    )


def print_stream_figures(name: str, f: dict[str, Any], *, wer: bool = True) -> None:
    print(
        f"  {name}: {f['streams']} streams, {f['stream_seconds']:.0f} stream-s in"
        f" {f['wall_s']:.0f} s; final p50 {secs(f.get('final_p50_s', math.nan))}"
        f" p99 {secs(f.get('final_p99_s', math.nan))}"
        f" max {secs(f.get('final_max_s', math.nan))}; partial gap p95: between"
        f" partials {secs(f['partial_message_gap_p95_s'])}, between visible changes"
        f" {secs(f.get('partial_gap_p95_s', math.nan))}; first partial p50"
        f" {secs(f.get('first_partial_p50_s', math.nan))}"
        + (f"; WER {f.get('wer', math.nan):.1%}" if wer else ""),
        flush=True,
    )
    print(
        f"    finals lost {f['finals_lost']}/{f['sentences_said']}, duplicated"
        f" {f['finals_duplicated']}; dropped {f['dropped']} {f['dropped_reasons'] or ''};"
        f" sessions succeeded {f['sessions_succeeded']}/{f['sessions_started']};"
        f" open -> ready p50 {secs(f['ready_p50_s'])} p99 {secs(f['ready_p99_s'])}",
        flush=True,
    )
    print(
        f"    a final's time: end of speech -> speech_stopped p50"
        f" {secs(f['endpoint_p50_s'])} p99 {secs(f['endpoint_p99_s'])};"
        f" speech_stopped -> final p50 {secs(f['after_endpoint_p50_s'])} p99"
        f" {secs(f['after_endpoint_p99_s'])}; engine per final p50"
        f" {secs(f['engine_p50_s'])} p99 {secs(f['engine_p99_s'])}",
        flush=True,
    )
    print(
        f"    web CPU {f['web_cpu_per_stream_s'] * 1000:.2f} ms per stream-s"
        f" ({f['web_cpu_share']:.0%} of a core; idle before the streams"
        f" {f['web_idle_share']:.1%}); web RSS"
        f" {f['rss_before'] / 2**20:.0f} -> {f['rss_peak'] / 2**20:.0f} MB ="
        f" {f['rss_per_stream'] / 1024:.0f} KB per stream; Redis"
        f" {f['redis_per_stream'] / 1024:.0f} KB per stream; worker CPU"
        f" {f['worker_cpu_per_stream_s']:.3f} s per stream-s; clients"
        f" {f['client_cpu_s']:.0f} s CPU, pacing lag p99"
        f" {f['pacing_lag_p99_s'] * 1000:.0f} ms max {f['pacing_lag_max_s'] * 1000:.0f} ms;"
        f" other programs {f['other_share']:.0%}, steal {f['steal_share']:.0%} of the"
        " machine",
        flush=True,
    )


def phase_whisper(
    cfg: pl.Config, opts: argparse.Namespace, report: Report, *, backlog: bool
) -> dict[str, Any]:
    name = "backlog" if backlog else "whisper"
    clips = live_clips.make_clips(opts.streams, opts.seed, seconds=opts.seconds)
    with pl.stack(cfg) as s:
        base = s.start_web()
        _, token = pl.make_token(name)
        url = ws_url(base, token=token)
        start_live_worker(s, opts)
        start_asr_worker(s, opts)
        warm_up(url, clips, min(2, len(clips)), opts)
        # The asr worker warm (a user of its own: see file_api_wer).
        pl.submit_and_wait(base, pl.make_token("warm-up")[1], write_wavs(clips[:1]), s)
        waiting = 0
        if backlog:
            paths = write_wavs(clips)
            jobs = [paths[i % len(paths)] for i in range(opts.backlog_jobs)]
            r = pl.load(base, pl.make_token("backlog")[1], jobs, 1, len(jobs))
            if r.failures:
                raise RuntimeError(f"backlog submits failed: {r.failures[:3]}")
            waiting = asr_queue_depth()
        # A backlog run is not repeated: its queue has drained meanwhile.
        f = when_quiet(
            opts,
            lambda: measure(s, url, clips, opts.streams, opts, procs=1),
            again=not backlog,
        )
        if backlog:
            f["asr_queue_before"] = waiting
            f["asr_queue_after"] = asr_queue_depth()
        else:
            f["file_wer"], f["file_texts"] = file_api_wer(base, clips, s)
    if backlog:
        purge_asr_queue()
    print_stream_figures(name, f)
    limit = BACKLOG_FINAL_P99_TARGET if backlog else FINAL_P99_TARGET
    label = f"{name}: {opts.streams} streams"
    if backlog:
        print(
            f"    asr queue: {f['asr_queue_before']} waiting when the streams began,"
            f" {f['asr_queue_after']} at the end",
            flush=True,
        )
        report.add(
            f"{label}, final p99",
            secs(f["final_p99_s"]),
            f"<= {limit} s",
            judged(opts, f["final_p99_s"] <= limit),
        )
    else:
        report.add(
            f"{label}, final p50",
            secs(f["final_p50_s"]),
            f"<= {FINAL_P50_TARGET} s",
            judged(opts, f["final_p50_s"] <= FINAL_P50_TARGET),
        )
        report.add(
            f"{label}, final p99",
            secs(f["final_p99_s"]),
            f"<= {limit} s",
            judged(opts, f["final_p99_s"] <= limit),
        )
        report.add(
            f"{label}, partial gap p95",
            secs(f["partial_message_gap_p95_s"]),
            f"<= {PARTIAL_GAP_P95_TARGET} s",
            judged(opts, f["partial_message_gap_p95_s"] <= PARTIAL_GAP_P95_TARGET),
        )
        delta = f["wer"] - f["file_wer"]
        print(
            f"    file API on the same clips: WER {f['file_wer']:.1%}; live finals"
            f" {f['wer']:.1%} ({delta:+.1%})",
            flush=True,
        )
        report.add(
            f"{label}, WER live - file",
            f"{f['wer']:.1%} - {f['file_wer']:.1%} = {delta:+.1%}",
            f"<= +{WER_VS_FILE_TARGET:.0%}",
            judged(opts, delta <= WER_VS_FILE_TARGET),
        )
    report.add(
        f"{label}, finals lost", str(f["finals_lost"]), "0", f["finals_lost"] == 0
    )
    report.add(f"{label}, dropped", str(f["dropped"]), "0", f["dropped"] == 0)
    report.add(
        f"{label}, web CPU per stream-s",
        f"{f['web_cpu_per_stream_s'] * 1000:.2f} ms",
    )
    report.details[name] = f
    return f


def phase_synthetic(cfg: pl.Config, opts: argparse.Namespace, report: Report) -> None:
    n = opts.synthetic_streams
    clips = live_clips.make_clips(
        min(SYNTHETIC_CLIPS, n), opts.seed, seconds=opts.synthetic_seconds
    )
    with pl.stack(cfg) as s:
        base = s.start_web()
        _, token = pl.make_token("synthetic")
        url = ws_url(base, token=token)
        start_live_worker(
            s,
            opts,
            concurrency=opts.synthetic_concurrency,
            ASR_ENGINE="synthetic",
            ASR_SYNTHETIC_RTF="0",
        )
        warm_up(url, clips, min(10, n), opts)
        f = when_quiet(
            opts, lambda: measure(s, url, clips, n, opts, procs=opts.client_procs)
        )
    print_stream_figures("synthetic", f, wer=False)
    label = f"synthetic: {n} streams x {opts.synthetic_seconds:.0f} s"
    report.add(f"{label}, dropped", str(f["dropped"]), "0", f["dropped"] == 0)
    report.add(
        f"{label}, finals lost", str(f["finals_lost"]), "0", f["finals_lost"] == 0
    )
    report.add(
        f"{label}, web RSS per stream",
        f"{f['rss_per_stream'] / 1024:.0f} KB",
        f"<= {RSS_PER_STREAM_TARGET // 1024} KB",
        f["rss_per_stream"] <= RSS_PER_STREAM_TARGET,
    )
    report.add(
        f"{label}, web CPU per stream-s",
        f"{f['web_cpu_per_stream_s'] * 1000:.2f} ms",
    )
    report.add(f"{label}, final p99", secs(f["final_p99_s"]))
    report.details["synthetic"] = f


def holds(f: dict[str, Any]) -> bool:
    """The capacity rule, the same for both systems: final p99 within the limit and no
    stream refused (or, ours, dropped)."""
    return (
        not f.get("refused")
        and not f.get("dropped")
        and f.get("final_p99_s", math.inf) <= CAPACITY_P99_LIMIT
    )


def search_capacity(
    run: Callable[[int], dict[str, Any]],
    known: dict[int, dict[str, Any]],
    start: int,
    max_streams: int,
) -> tuple[int, dict[int, dict[str, Any]]]:
    """The most streams that ``holds``, doubling from ``start`` while it holds (up to
    ``max_streams``), or halving from it until it does."""
    runs = dict(known)

    def get(k: int) -> dict[str, Any]:
        if k not in runs:
            runs[k] = run(k)
        return runs[k]

    n = start
    if holds(get(n)):
        held = n
        while n * 2 <= max_streams and holds(get(n * 2)):
            n *= 2
            held = n
        return held, runs
    while n > 1:
        n //= 2
        if holds(get(n)):
            return n, runs
    return 0, runs


def short_line(system: str, f: dict[str, Any]) -> str:
    return (
        f"  {system}: {f['streams']} streams  final p50 {secs(f['final_p50_s'])}"
        f"  p99 {secs(f['final_p99_s'])}  partial gap p95"
        f" {secs(f['partial_gap_p95_s'])}  WER {f['wer']:.1%}  missing"
        f" {f.get('finals_missing', 0)}/{f.get('utterances', 0)}"
        + (f"  refused {len(f['refused'])}" if f.get("refused") else "")
        + (f"  dropped {f['dropped']}" if f.get("dropped") else "")
    )


def phase_whisperlive(cfg: pl.Config, opts: argparse.Namespace, report: Report) -> None:
    n = opts.streams

    def clips_of(k: int) -> list[live_clips.Clip]:
        return live_clips.make_clips(k, opts.seed, seconds=opts.seconds)

    ours: dict[int, dict[str, Any]] = {}
    if "whisper" in report.details:
        ours[n] = report.details["whisper"]
    with pl.stack(cfg) as s:
        base = s.start_web()
        _, token = pl.make_token("capacity")
        url = ws_url(base, token=token)
        start_live_worker(s, opts)
        warm_up(url, clips_of(2), 2, opts)

        def run_ours(k: int) -> dict[str, Any]:
            f = when_quiet(opts, lambda: measure(s, url, clips_of(k), k, opts, procs=1))
            print(short_line("kikipounamu", f), flush=True)
            return f

        our_capacity, ours = search_capacity(run_ours, ours, n, opts.max_streams)

    def run_theirs(k: int) -> dict[str, Any]:
        f = wl.run_when_quiet(
            clips_of(k),
            max_others=opts.quiet,
            tries=opts.tries,
            realtime=opts.speed > 0,
            speed=opts.speed or 1.0,
            threads=opts.threads,
            frame_ms=opts.frame_ms,
        )
        print(short_line("WhisperLive", f), flush=True)
        return f

    their_capacity, theirs = search_capacity(run_theirs, {}, n, opts.max_streams)
    a, b = ours[n], theirs[n]
    print(f"  side by side at {n} streams (same clips, model, threads, machine):")
    rows = [
        ("final p50", secs(a["final_p50_s"]), secs(b["final_p50_s"])),
        ("final p99", secs(a["final_p99_s"]), secs(b["final_p99_s"])),
        (
            "final p99, sentences followed by speech",
            secs(a["final_mid_p99_s"]),
            secs(b["final_mid_p99_s"]),
        ),
        (
            "final p50, each stream's last sentence",
            secs(a["final_last_p50_s"]),
            secs(b["final_last_p50_s"]),
        ),
        (
            "partial gap p95 (visible changes)",
            secs(a["partial_gap_p95_s"]),
            secs(b["partial_gap_p95_s"]),
        ),
        (
            "first partial p50",
            secs(a["first_partial_p50_s"]),
            secs(b["first_partial_p50_s"]),
        ),
        ("WER", f"{a['wer']:.1%}", f"{b['wer']:.1%}"),
        (
            "WER per sentence",
            f"{a['wer_per_utterance']:.1%}",
            f"{b['wer_per_utterance']:.1%}",
        ),
        (
            "finals missing",
            f"{a['finals_missing']}/{a['utterances']}",
            f"{b['finals_missing']}/{b['utterances']}",
        ),
        (
            f"streams held (p99 <= {CAPACITY_P99_LIMIT:.0f} s)",
            f"{our_capacity}"
            + (" (search limit)" if our_capacity >= opts.max_streams else ""),
            f"{their_capacity}"
            + (" (search limit)" if their_capacity >= opts.max_streams else ""),
        ),
    ]
    width = max(len(label) for label, _, _ in rows) + 2
    print(f"    {'':<{width}}{'kikipounamu':<16}WhisperLive {wl.PINS['whisper-live']}")
    for label, x, y in rows:
        print(f"    {label:<{width}}{x:<16}{y}")
    label = f"vs WhisperLive at {n} streams"
    report.add(
        f"{label}, final p50",
        f"{secs(a['final_p50_s'])} vs {secs(b['final_p50_s'])}",
        "no worse",
        judged(opts, a["final_p50_s"] <= b["final_p50_s"]),
    )
    report.add(
        f"{label}, final p99",
        f"{secs(a['final_p99_s'])} vs {secs(b['final_p99_s'])}",
        "no worse",
        judged(opts, a["final_p99_s"] <= b["final_p99_s"]),
    )
    report.add(
        f"{label}, WER",
        f"{a['wer']:.1%} vs {b['wer']:.1%}",
        f"<= +{WER_VS_WHISPERLIVE_TARGET:.0%}",
        judged(opts, a["wer"] - b["wer"] <= WER_VS_WHISPERLIVE_TARGET),
    )
    if not our_capacity and not their_capacity:
        print("    neither system held even one stream: no ratio to judge")
    report.add(
        f"streams held, p99 <= {CAPACITY_P99_LIMIT:.0f} s",
        f"{our_capacity} vs {their_capacity}",
        f">= {CAPACITY_RATIO_TARGET:.0f}x",
        judged(
            opts,
            our_capacity >= CAPACITY_RATIO_TARGET * their_capacity and our_capacity > 0,
        ),
    )
    report.details["capacity"] = {
        "ours": {k: strip(v) for k, v in ours.items()},
        "theirs": theirs,
        "our_capacity": our_capacity,
        "their_capacity": their_capacity,
    }


def strip(f: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in f.items() if k != "file_texts"}


# Running -----------------------------------------------------------------------------


def raise_nofile_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: 500 sockets each side, inherited."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def print_table(
    report: Report, cfg: pl.Config, opts: argparse.Namespace, started: float
) -> None:
    print()
    print("=" * 100)
    load1, load5, _ = os.getloadavg()
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, Python"
        f" {platform.python_version()}, load average now {load1:.1f} / {load5:.1f};"
        f" reference loop {pl.reference_loop_ms():.0f} ms (lower is faster)"
    )
    print(f"database: {cfg.database}")
    print(f"redis: {cfg.redis}")
    print(
        "web: uvicorn kikipounamu.asgi:application --workers 1; live worker: celery -Q"
        + (
            " live and -Q live_partial (two)"
            if opts.split_live
            else " live,live_partial"
        )
        + f" -P prefork -c {opts.live_concurrency}, LIVE_THREADS={opts.live_threads}"
        " (synthetic"
        f" phase: -c {opts.synthetic_concurrency}, ASR_ENGINE=synthetic); asr worker"
        f" -c 1, ASR_THREADS={opts.threads}"
    )
    print(
        f"clients: {opts.frame_ms} ms frames, speed {opts.speed:g}"
        f" ({'real time' if opts.speed == 1 else 'targets not judged'}),"
        f" permessage-deflate {'offered' if opts.deflate else 'off'}"
    )
    if cfg.what_if:
        print(
            f"WHAT-IF PATCHES ACTIVE in the servers: {', '.join(cfg.what_if)}"
            " -- these are not the project's figures"
        )
    print("-" * 100)
    width = max(len(f.name) for f in report.figures) + 2
    print(f"{'figure':<{width}}{'value':<28}target")
    for f in report.figures:
        mark = "" if f.met is None else ("  PASS" if f.met else "  FAIL")
        print(f"{f.name:<{width}}{f.value:<28}{f.target}{mark}")
    print("-" * 100)
    print(f"total run time {time.monotonic() - started:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--phases", default=",".join(PHASES), help=", ".join(PHASES))
    parser.add_argument("--streams", type=int, default=4, help="whisper phases")
    parser.add_argument("--seconds", type=float, default=40.0, help="whisper clips")
    parser.add_argument("--synthetic-streams", type=int, default=500)
    parser.add_argument("--synthetic-seconds", type=float, default=60.0)
    parser.add_argument("--synthetic-concurrency", type=int, default=1)
    parser.add_argument("--backlog-jobs", type=int, default=100)
    parser.add_argument("--max-streams", type=int, default=16, help="capacity search")
    parser.add_argument(
        "--speed", type=float, default=1.0, help="x real time; 0: no pacing"
    )
    parser.add_argument("--frame-ms", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="ASR_THREADS")
    parser.add_argument(
        "--live-concurrency",
        type=int,
        default=2,
        help="live worker processes (the Procfile's LIVE_WORKER_CONCURRENCY)",
    )
    parser.add_argument(
        "--live-threads", type=int, default=1, help="LIVE_THREADS of the live worker"
    )
    parser.add_argument(
        "--split-live",
        action="store_true",
        help="a live worker for finals (-Q live) and one for partials (-Q live_partial)",
    )
    parser.add_argument(
        "--client-procs", type=int, default=2, help="client processes (synthetic)"
    )
    parser.add_argument("--no-deflate", dest="deflate", action="store_false")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quiet",
        type=float,
        default=None,
        metavar="CORES",
        help="on a shared machine: wait until other programs take at most CORES"
        " before each measurement, and run it again (--tries) if they took more",
    )
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument(
        "--what-if",
        default="",
        help=f"comma-separated fixes to try in the servers: {', '.join(WHAT_IFS)}",
    )
    parser.add_argument("--json", type=Path, help="write every figure here too")
    opts = parser.parse_args()
    names = [p for p in opts.phases.split(",") if p]
    if unknown := set(names) - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    names = [p for p in PHASES if p in names]
    what_if = [w for w in opts.what_if.split(",") if w]
    if unknown := set(what_if) - set(WHAT_IFS):
        parser.error(f"unknown --what-if: {', '.join(sorted(unknown))}")
    started = time.monotonic()
    cfg = pl.Config(
        web_workers=1,
        worker_pool="prefork",
        worker_concurrency=1,
        worker_log_level="info",
        what_if=what_if,
    )
    raise_nofile_limit()
    # SIGTERM ends the run as Ctrl-C does: the finally blocks stop every child.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    pl.use_bench_dir(LIVE_DIR)
    shutil_logs()
    with pl.own_redis() as cfg.redis:
        cfg.database = pl.configure_environment()
        pl.setup_django()
        pl.redis_client().flushdb()
        report = Report()
        try:
            for name in names:
                print(f"[{name}]", flush=True)
                if name == "whisper":
                    phase_whisper(cfg, opts, report, backlog=False)
                elif name == "backlog":
                    phase_whisper(cfg, opts, report, backlog=True)
                elif name == "synthetic":
                    phase_synthetic(cfg, opts, report)
                else:
                    phase_whisperlive(cfg, opts, report)
        except KeyboardInterrupt:
            print("interrupted: everything started was stopped", file=sys.stderr)
            return 130
        finally:
            with contextlib.suppress(Exception):
                pl.redis_client().flushdb()
                pl.remove_bench_users()
            import shutil

            shutil.rmtree(LIVE_DIR / "media", ignore_errors=True)
            shutil.rmtree(pl.CLIP_DIR, ignore_errors=True)
    print_table(report, cfg, opts, started)
    if opts.json:
        opts.json.write_text(json.dumps(report.details, indent=2, default=str))
    return 0


def shutil_logs() -> None:
    import shutil

    shutil.rmtree(pl.LOG_DIR, ignore_errors=True)  # the last run's logs only


if __name__ == "__main__":
    sys.exit(main())
