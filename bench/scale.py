"""Scale-out: jobs/s with 1 to 16 worker processes, and one long file fanned out.

Run from the project root with the virtualenv:

    .venv/bin/python bench/scale.py            # full run, about 6 minutes
    .venv/bin/python bench/scale.py --quick    # smoke run, about 1.5 minutes
    .venv/bin/python bench/scale.py --only scale --processes 1,8

Its world is bench/pipeline.py's (whose helpers it uses), kept under var/bench-scale/:
a fresh SQLite file, a Redis server of its own on a Unix socket, its own MEDIA_ROOT,
a web server, and real Celery workers started with `celery -A kikipounamu worker
-Q asr`, logs in var/bench-scale/logs/.

Workers are processes on this one machine standing in for machines: the synthetic
engine sleeps audio seconds x ASR_SYNTHETIC_RTF, so the work is waiting, not CPU,
and what limits scale-out is what the pipeline does around the engine (claim,
decode, database, Celery, Redis). That costs CPU per job, measured and printed; the
job sizes are chosen so that at 16 processes it stays a small share of two cores
(16 x CPU per job / seconds per job, printed as "cores the pipeline needs").

Figures:
  scale   the same fixed work (--jobs jobs of --job-seconds of audio each) done by 1,
          2, 4, 8 and 16 worker processes: jobs/s, and efficiency against linear
          (jobs/s at N / (N x jobs/s at 1)); where each process's time went
          (engine, the rest of the task, between tasks, waiting at the start and at
          the end), and the CPU per job
  fanout  one long file (60 minutes, generated from espeak-ng speech with pauses)
          fanned out (ASR_FANOUT_*, the project's defaults) across 1, 4 and 8
          processes: wall time against ideal, defined below

Choices, and why:
- Worker processes are N workers of --concurrency 1 (`-P prefork -c 1`, as the
  Procfile runs one per GPU), not one worker of --concurrency N: each has its own
  broker connection, consumer and prefetch, as N machines would; one worker's single
  parent process would hand every message to its children. `--one-worker` measures
  that layout instead.
- ASR_BATCH_JOBS=1 in the workers: with micro-batching a process claims up to 16
  waiting short jobs and runs them one after another, so the first processes to
  start take the whole queue and the others idle; that measures the batching rule,
  not scale-out (issue 17 changes batching for engines that run jobs one by one).
- The work is queued before any of it can start: the jobs are submitted through the
  API with no worker running, their messages are set aside in Redis (RENAMENX of the
  `asr` list), the N workers are started and warmed up (short jobs until every pool
  process has run one), and the messages are put back in one command: every blocked
  worker is handed one at once. Time counts from then to the last job's finished_at.
  So neither the web's submit speed nor the workers' start-up (seconds on a busy
  machine) is in the figure, only what N processes do with a full queue. No beat
  runs, so the reconciler cannot take the set-aside messages for lost.
- Fan-out: one job, submitted to running, warmed-up workers; time counts from the
  job's created_at (the upload stored, the message sent on commit) to its
  finished_at. Ideal = S + audio x RTF / N, where S, the part no number of
  processes shortens, is measured in the same run: the leader's part (its claim,
  decoding the whole file, finding pauses with VAD, writing the chunks, up to the
  first chunk's start) plus the merge (the last chunk's end to the job's end).
  "Chunk-bound" is the best any scheduler could do with the chunks the cut made
  (in order, each to the first free process, zero overhead): what granularity alone
  costs. The chunk phase alone (first chunk start to last chunk end) against
  audio x RTF / N is printed beside it, since S weighs on the wall time at 8.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ is first on sys.path, and the package `bench` (and the
# project) is not there at all: the project root goes first instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime as dt  # noqa: E402
import itertools  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from bench import pipeline as pl  # noqa: E402

SCALE_DIR = ROOT / "var" / "bench-scale"
QUEUE = "asr"
HELD = "bench-scale:held"  # where the queued messages wait for the start
PHASES = ("scale", "fanout")
SAMPLE_RATE = 16_000
WARM_UP_SECONDS = 1.0  # of audio, per warm-up job

# Issue 14's targets.
EFFICIENCY_TARGETS = {8: 0.90, 16: 0.80}
FANOUT_TARGET_PROCESSES = 8
FANOUT_TARGET_OVER_IDEAL = 0.15

# A full run takes about 6 minutes: 48 jobs x 1.25 s is 60 s of engine time, done
# once per process count (~120 s in all); the fan-out's 72 s of engine time on 1, 4
# and 8 processes plus its serial part (~10 s each) ~130 s; the rest is starting
# workers (16 take ~17 s here) and warming them up. 48 is a multiple of every
# process count: each process gets the same share. At 16 processes the pipeline's
# ~22 ms of CPU per job (workers ~17, Redis, this client) is 16 x 22 / 1250 = 0.28
# cores of the two.
FULL: dict[str, Any] = {
    "processes": [1, 2, 4, 8, 16],
    "jobs": 48,
    "job_seconds": 2.5,  # of audio: 1.25 s of engine time at rtf 0.5
    "rtf": 0.5,
    "fanout_minutes": 60.0,
    "fanout_rtf": 0.02,  # 72 s of engine time for 60 minutes
    "fanout_processes": [1, 4, 8],
}
QUICK: dict[str, Any] = {
    "processes": [1, 2, 4],
    "jobs": 16,
    "job_seconds": 2.0,
    "rtf": 0.5,
    # Past ASR_FANOUT_SECONDS (600 by default), or it would not fan out.
    "fanout_minutes": 12.0,
    "fanout_rtf": 0.02,
    "fanout_processes": [1, 4],
}


# Audio ---------------------------------------------------------------------------------


def speech_samples(seconds: float, seed: int = 0) -> np.ndarray:
    """``seconds`` of 16 kHz mono speech: espeak-ng sentences (pipeline's clips)
    with pauses of 0.3-1.5 s between them and a longer one now and then, as a
    recorded talk has; seeded, so every run cuts the same chunks."""
    from asr import audio as audio_lib

    clips = [
        audio_lib.decode(path, max_seconds=60, timeout=60)
        for path in pl.engine_clips(12)
    ]
    rng = np.random.default_rng(seed)
    want = int(seconds * SAMPLE_RATE)
    parts: list[np.ndarray] = []
    total = 0
    while total < want:
        clip = clips[int(rng.integers(len(clips)))]
        pause = rng.uniform(2.0, 4.0) if rng.random() < 0.05 else rng.uniform(0.3, 1.5)
        parts += [clip, np.zeros(int(pause * SAMPLE_RATE), dtype=np.float32)]
        total += clip.shape[0] + parts[-1].shape[0]
    return np.concatenate(parts)[:want]


def write_flac(path: Path, samples: np.ndarray) -> Path:
    """16-bit FLAC: an hour as WAV (115 MB) is past the upload limit (100 MB)."""
    import av

    pcm = np.clip(samples * 32767, -32768, 32767).astype(np.int16)
    tmp = path.with_suffix(".part")
    with av.open(str(tmp), "w", format="flac") as out:
        stream = out.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        for at in range(0, pcm.shape[0], SAMPLE_RATE):
            frame = av.AudioFrame.from_ndarray(
                pcm[None, at : at + SAMPLE_RATE], format="s16", layout="mono"
            )
            frame.sample_rate = SAMPLE_RATE
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    tmp.replace(path)
    return path


def clip_of(seconds: float, name: str) -> Path:
    """A WAV of ``seconds`` of speech (the synthetic engine reads only its length;
    decoding it costs what a short upload's does)."""
    from asr import chunking

    pl.CLIP_DIR.mkdir(parents=True, exist_ok=True)
    path = pl.CLIP_DIR / name
    chunking.write_wav(path, speech_samples(seconds))
    return path


def long_file(minutes: float) -> Path:
    """The fan-out's file, made once and kept (same seed, same file)."""
    pl.CLIP_DIR.mkdir(parents=True, exist_ok=True)
    path = pl.CLIP_DIR / f"talk-{minutes:g}min.flac"
    if not path.exists():
        started = time.monotonic()
        write_flac(path, speech_samples(minutes * 60))
        print(
            f"  made {path.relative_to(ROOT)} ({path.stat().st_size / 1e6:.0f} MB)"
            f" in {time.monotonic() - started:.0f} s",
            flush=True,
        )
    return path


# Workers -------------------------------------------------------------------------------


@dataclass
class Bench:
    """What every measurement shares: the processes, the web's address, the worker
    layout, the warm-up clip."""

    stack: pl.Stack
    base: str
    one_worker: bool
    warm_up_clip: Path


def worker_env(rtf: float) -> dict[str, str]:
    return {
        "ASR_ENGINE": "synthetic",
        "ASR_SYNTHETIC_RTF": f"{rtf:g}",
        "ASR_BATCH_JOBS": "1",
    }


def pool_pids(proc: pl.Process) -> set[int]:
    """The pool processes (children) of a worker's main process."""
    pids = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == proc.popen.pid:  # parent pid
            pids.add(int(entry.name))
    return pids


def add_workers(bench: Bench, processes: int, rtf: float) -> None:
    """Have ``processes`` pool processes running at ``rtf``, each warmed up by a job
    of its own; more are started, never stopped, here."""
    s = bench.stack
    have = sum(len(pool_pids(w)) for w in s.workers)
    started = time.monotonic()
    new: list[pl.Process] = []
    if bench.one_worker:
        if s.workers:
            s.stop_workers()
        new.append(
            s.start_worker(pool="prefork", concurrency=processes, **worker_env(rtf))
        )
    else:
        for _ in range(processes - have):
            new.append(s.start_worker(pool="prefork", concurrency=1, **worker_env(rtf)))
    for proc in new:
        while " ready." not in proc.log_path.read_text(errors="replace"):
            s.check()
            if time.monotonic() - started > 180:
                raise TimeoutError(f"{proc.name} not ready:\n{proc.tail()}")
            time.sleep(0.1)
    ready = time.monotonic() - started
    warm_up(bench, processes)
    print(
        f"  {processes} process(es): {len(new)} worker(s) started, ready in"
        f" {ready:.1f} s, warmed up in {time.monotonic() - started - ready:.1f} s",
        flush=True,
    )


def warm_up(bench: Bench, processes: int) -> None:
    """Short jobs until every pool process has run one: its first job's one-off costs
    (connections, lazy imports) stay out of the figures."""
    from asr.models import Transcription

    pids = set().union(*(pool_pids(w) for w in bench.stack.workers))
    if len(pids) != processes:
        raise RuntimeError(f"{len(pids)} pool processes running, not {processes}")
    user, token = pl.make_token("warm-up")
    for _ in range(10):
        pl.submit_and_wait(
            bench.base, token, [bench.warm_up_clip] * processes, bench.stack
        )
        metas = Transcription.objects.filter(owner=user).values_list("meta", flat=True)
        if pids <= {m.get("worker_pid") for m in metas}:
            return
    raise RuntimeError("warm-up jobs did not reach every pool process")


# Scale-out -----------------------------------------------------------------------------


Spans = dict[int, list[tuple[float, float, float]]]  # pid: (started, finished, engine)


def seconds_between(start: dt.datetime, at: dt.datetime | None) -> float:
    """Seconds from ``start`` to ``at``, a timestamp of a job that succeeded."""
    if at is None:
        raise RuntimeError("a finished job without its timestamps")
    return (at - start).total_seconds()


@dataclass
class ScaleResult:
    processes: int
    jobs: int
    wall: float
    rate: float
    share: dict[str, float]  # of processes x wall
    gap_p50: float
    gap_max: float
    start_max: float
    overhead_p50: float  # task time not in the engine, per job
    cpu_line: str
    worker_cpu_per_job: float
    ours_cpu_per_job: float  # web, workers, Redis and this client


def submit_held(bench: Bench, token: str, clip: Path, count: int) -> list[str]:
    """Submit ``count`` jobs with no worker running and set their messages aside."""
    redis = pl.redis_client()
    if bench.stack.workers:
        raise RuntimeError("workers running: they would take the jobs")
    redis.delete(HELD)
    clients = math.gcd(count, 4)
    r = pl.load(bench.base, token, [clip], clients, count // clients)
    if r.failures or len(r.job_ids) != count:
        raise RuntimeError(f"{len(r.failures)} submits failed, e.g. {r.failures[:1]}")
    queued = redis.llen(QUEUE)
    if queued != count or not redis.renamenx(QUEUE, HELD):
        raise RuntimeError(f"{queued} messages in {QUEUE!r}, expected {count}")
    return r.job_ids


def release(bench: Bench) -> dt.datetime:
    """Put the set-aside messages back at once; the time of it."""
    at = dt.datetime.now(dt.UTC)
    # NX: messages already in the queue (there should be none) are not overwritten.
    if not pl.redis_client().renamenx(HELD, QUEUE):
        raise RuntimeError(f"{QUEUE!r} not empty at the start")
    return at


def measure_scale(bench: Bench, plan: dict[str, Any], processes: int) -> ScaleResult:
    count, rtf = plan["jobs"], plan["rtf"]
    user, token = pl.make_token(f"scale-{processes}")
    ids = submit_held(bench, token, plan["clip"], count)
    add_workers(bench, processes, rtf)
    with pl.CpuMeter(bench.stack) as meter:
        t0 = release(bench)
        pl.wait_jobs(
            ids,
            bench.stack.check,
            timeout=count * plan["job_seconds"] * rtf * 3 + 120,
            interval=0.25,
        )
    bench.stack.stop_workers()
    rows = list(
        pl.jobs_of(user).values_list(
            "started_at", "finished_at", "engine_seconds", "meta"
        )
    )
    by_pid: Spans = defaultdict(list)
    for started, finished, engine, meta in rows:
        by_pid[meta["worker_pid"]].append(
            (seconds_between(t0, started), seconds_between(t0, finished), engine)
        )
    wall = max(finished for spans in by_pid.values() for _, finished, _ in spans)
    share = where_time_went(by_pid, processes, wall)
    gaps = gaps_of(by_pid)
    starts = [min(spans)[0] for spans in by_pid.values()]
    overheads = [f - s - e for spans in by_pid.values() for s, f, e in spans]
    cpu_line, _ = meter.report(count)
    u = meter.used
    return ScaleResult(
        processes=processes,
        jobs=count,
        wall=wall,
        rate=count / wall,
        share=share,
        gap_p50=pl.pct(gaps, 50) if gaps else float("nan"),
        gap_max=max(gaps, default=float("nan")),
        start_max=max(starts),
        overhead_p50=pl.pct(overheads, 50),
        cpu_line=cpu_line,
        worker_cpu_per_job=u["worker"] / count,
        ours_cpu_per_job=sum(u[k] for k in ("web", "worker", "redis", "client"))
        / count,
    )


def gaps_of(by_pid: Spans) -> list[float]:
    """The idle times between one task's end and the next one's start, per process."""
    return [
        b[0] - a[1]
        for spans in by_pid.values()
        for a, b in itertools.pairwise(sorted(spans))
    ]


def where_time_went(by_pid: Spans, processes: int, wall: float) -> dict[str, float]:
    """Each process's time from the start to the last job's end, summed over the
    processes, in parts (shares of processes x wall): in the engine, in the rest of
    the task (claim, decode, store), between tasks (ack, fetch, hand-over to the
    pool), before its first task, after its last (waiting for the others)."""
    parts = dict.fromkeys(("engine", "task", "between", "before", "after"), 0.0)
    for spans in by_pid.values():
        spans = sorted(spans)
        parts["before"] += spans[0][0]
        parts["after"] += wall - spans[-1][1]
        for (_, finished, _), (started, _, _) in itertools.pairwise(spans):
            parts["between"] += started - finished
        for started, finished, engine in spans:
            parts["engine"] += engine
            parts["task"] += finished - started - engine
    parts["before"] += (processes - len(by_pid)) * wall  # processes that ran none
    return {k: v / (processes * wall) for k, v in parts.items()}


def phase_scale(bench: Bench, plan: dict[str, Any]) -> list[pl.Figure]:
    count, seconds, rtf = plan["jobs"], plan["job_seconds"], plan["rtf"]
    plan["clip"] = clip_of(seconds, f"job-{seconds:g}s.wav")
    print(
        f"  {count} jobs of {seconds:g} s of audio, {seconds * rtf:g} s of engine time"
        f" each (synthetic, rtf {rtf:g}), queued before the workers start",
        flush=True,
    )
    results: list[ScaleResult] = []
    for processes in plan["processes"]:
        if count % processes:
            print(f"  note: {count} jobs do not divide among {processes} processes")
        r = measure_scale(bench, plan, processes)
        results.append(r)
        report_scale(r, results[0], seconds * rtf)
    return scale_figures(results, seconds * rtf)


def efficiency(r: ScaleResult, one: ScaleResult) -> float:
    return r.rate / (r.processes * one.rate)


def report_scale(r: ScaleResult, one: ScaleResult, job_seconds: float) -> None:
    sh = r.share
    print(
        f"  N={r.processes:<2} {r.jobs} jobs in {r.wall:.2f} s = {r.rate:.2f} jobs/s,"
        f" efficiency {efficiency(r, one):.1%}\n"
        f"    process time: engine {sh['engine']:.1%}, rest of the task"
        f" {sh['task']:.1%}, between tasks {sh['between']:.1%}, before the first"
        f" {sh['before']:.1%}, after the last {sh['after']:.1%}\n"
        f"    between tasks p50 {pl.ms(r.gap_p50)} max {pl.ms(r.gap_max)}; last"
        f" process to start {pl.ms(r.start_max)} after the release; task time not in"
        f" the engine p50 {pl.ms(r.overhead_p50)}\n"
        f"    {r.cpu_line}\n"
        f"    cores the pipeline needs at this rate: {r.ours_cpu_per_job * r.rate:.2f}"
        f" (all our processes' CPU per job x jobs/s; {r.processes} x"
        f" {r.ours_cpu_per_job * 1000:.0f} ms / {job_seconds:g} s ="
        f" {r.processes * r.ours_cpu_per_job / job_seconds:.2f} at full speed)",
        flush=True,
    )


def scale_figures(results: list[ScaleResult], job_seconds: float) -> list[pl.Figure]:
    one = results[0]
    figures = []
    for r in results:
        target = EFFICIENCY_TARGETS.get(r.processes)
        eff = efficiency(r, one)
        figures.append(
            pl.Figure(
                f"scale N={r.processes} jobs/s, efficiency",
                f"{r.rate:.2f}, {eff:.1%}",
                f">= {target:.0%}" if target else "",
                eff >= target if target else None,
            )
        )
    last = results[-1]
    figures += [
        pl.Figure(
            f"  worker CPU per job (N={one.processes} / N={last.processes})",
            f"{one.worker_cpu_per_job * 1000:.1f} / {last.worker_cpu_per_job * 1000:.1f} ms",
        ),
        pl.Figure(
            f"  cores needed at N={last.processes} (N x CPU/job / job s)",
            f"{last.processes * last.ours_cpu_per_job / job_seconds:.2f} of"
            f" {os.cpu_count()}",
        ),
    ]
    return figures


# Fan-out -------------------------------------------------------------------------------


@dataclass
class FanoutResult:
    processes: int
    audio: float
    chunks: list[tuple[float, float]]  # (start, end) s of each chunk, in order
    wall: float
    ideal: float
    parallel: float  # audio x rtf / processes
    claim: float
    decode: float
    split: float
    lead: float  # created_at to the first chunk's start
    merge: float  # the last chunk's end to the job's end
    chunk_phase: float
    chunk_bound: float
    gap_p50: float
    overhead_p50: float
    cpu: dict[str, float]

    @property
    def serial(self) -> float:
        return self.lead + self.merge

    @property
    def over_ideal(self) -> float:
        return self.wall / self.ideal - 1


def list_schedule(durations: list[float], processes: int) -> float:
    """Makespan of ``durations`` taken in order, each by the first free process."""
    free = [0.0] * processes
    for duration in durations:
        at = free.index(min(free))
        free[at] += duration
    return max(free)


def measure_fanout(bench: Bench, plan: dict[str, Any], processes: int) -> FanoutResult:
    from asr.models import Transcription
    from asr.models import TranscriptionChunk

    rtf = plan["fanout_rtf"]
    add_workers(bench, processes, rtf)
    _, token = pl.make_token(f"fanout-{processes}")
    with pl.CpuMeter(bench.stack) as meter:
        r = pl.load(bench.base, token, [plan["long_file"]], 1, 1)
        if r.failures:
            raise RuntimeError(f"upload failed: {r.failures[0]}")
        timeout = plan["fanout_minutes"] * 60 * rtf * 3 + 300
        pl.wait_jobs(r.job_ids, bench.stack.check, timeout=timeout, interval=0.25)
    job = Transcription.objects.get(pk=r.job_ids[0])
    rows = list(
        TranscriptionChunk.objects.filter(transcription=job)
        .order_by("index")
        .values_list(
            "start", "end", "started_at", "finished_at", "engine_seconds", "worker_pid"
        )
    )
    if not rows:
        raise RuntimeError(f"job {job.pk} was not fanned out (ASR_FANOUT_SECONDS?)")
    t0 = job.created_at

    def since(at: dt.datetime | None) -> float:
        return seconds_between(t0, at)

    first = min(since(s) for _, _, s, _, _, _ in rows)
    last = max(since(f) for _, _, _, f, _, _ in rows)
    wall = since(job.finished_at)
    # The chunks cover every sample once: their lengths add up to the audio's.
    audio = sum(end - start for start, end, *_ in rows)
    by_pid: Spans = defaultdict(list)
    for _, _, started, finished, engine, pid in rows:
        by_pid[pid or 0].append((since(started), since(finished), engine or 0.0))
    gaps = gaps_of(by_pid)
    parallel = audio * rtf / processes
    result = FanoutResult(
        processes=processes,
        audio=audio,
        chunks=[(start, end) for start, end, *_ in rows],
        wall=wall,
        ideal=first + (wall - last) + parallel,
        parallel=parallel,
        claim=since(job.started_at),
        decode=job.decode_seconds or 0.0,
        split=job.meta.get("split_seconds", 0.0),
        lead=first,
        merge=wall - last,
        chunk_phase=last - first,
        chunk_bound=list_schedule([(e - s) * rtf for s, e, *_ in rows], processes),
        gap_p50=pl.pct(gaps, 50) if gaps else float("nan"),
        overhead_p50=pl.pct(
            [f - s - e for spans in by_pid.values() for s, f, e in spans], 50
        ),
        cpu={k: meter.used[k] for k in ("web", "worker", "redis", "client")},
    )
    return result


def phase_fanout(bench: Bench, plan: dict[str, Any]) -> list[pl.Figure]:
    from django.conf import settings

    plan["long_file"] = long_file(plan["fanout_minutes"])
    rtf = plan["fanout_rtf"]
    print(
        f"  one {plan['fanout_minutes']:g}-minute FLAC upload, synthetic rtf {rtf:g}"
        f" ({plan['fanout_minutes'] * 60 * rtf:.0f} s of engine time);"
        f" ASR_FANOUT_SECONDS={settings.ASR_FANOUT_SECONDS:g},"
        f" ASR_FANOUT_CHUNK_SECONDS={settings.ASR_FANOUT_CHUNK_SECONDS:g},"
        f" ASR_FANOUT_MAX_CHUNK_SECONDS={settings.ASR_FANOUT_MAX_CHUNK_SECONDS:g}",
        flush=True,
    )
    figures = []
    bench.stack.stop_workers()
    for processes in plan["fanout_processes"]:
        r = measure_fanout(bench, plan, processes)
        report_fanout(r)
        is_target = processes == FANOUT_TARGET_PROCESSES
        figures.append(
            pl.Figure(
                f"fan-out N={processes} wall / ideal",
                f"{r.wall:.1f} / {r.ideal:.1f} s ({r.over_ideal:+.1%})",
                f"<= +{FANOUT_TARGET_OVER_IDEAL:.0%}" if is_target else "",
                r.over_ideal <= FANOUT_TARGET_OVER_IDEAL if is_target else None,
            )
        )
        figures.append(
            pl.Figure(
                "  serial / chunk phase / ideal of it",
                f"{r.serial:.1f} / {r.chunk_phase:.1f} / {r.parallel:.1f} s",
            )
        )
    bench.stack.stop_workers()
    return figures


def report_fanout(r: FanoutResult) -> None:
    lengths = [e - s for s, e in r.chunks]
    other = r.lead - r.claim - r.decode - r.split
    print(
        f"  N={r.processes:<2} {r.audio / 60:.1f} min in {len(r.chunks)} chunks of"
        f" {min(lengths):.0f}-{max(lengths):.0f} s: wall {r.wall:.2f} s, ideal"
        f" {r.ideal:.2f} s ({r.over_ideal:+.1%})\n"
        f"    serial {r.serial:.2f} s: leader {r.lead:.2f} s (claim {r.claim:.2f},"
        f" decode {r.decode:.2f}, VAD split {r.split:.2f}, chunk files, rows and"
        f" the first chunk's start {other:.2f}) + merge {r.merge:.2f} s\n"
        f"    chunk phase {r.chunk_phase:.2f} s against audio x rtf / N ="
        f" {r.parallel:.2f} s ({r.chunk_phase / r.parallel - 1:+.1%}); chunk-bound"
        f" {r.chunk_bound:.2f} s ({r.chunk_bound / r.parallel - 1:+.1%}: the"
        f" granularity's share)\n"
        f"    between chunks on a process p50 {pl.ms(r.gap_p50)}; chunk time not in"
        f" the engine p50 {pl.ms(r.overhead_p50)}\n"
        f"    CPU: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in r.cpu.items())
        + " (the web's is the upload's)",
        flush=True,
    )


# Main ----------------------------------------------------------------------------------


def print_header(cfg: pl.Config, plan: dict[str, Any], one_worker: bool) -> None:
    load1, load5, _ = os.getloadavg()
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, Python"
        f" {platform.python_version()}, load average {load1:.1f} / {load5:.1f};"
        f" reference loop {pl.reference_loop_ms():.0f} ms (lower is faster)"
    )
    print(f"database: {cfg.database}")
    print(f"redis: {cfg.redis}")
    layout = (
        "one worker, -P prefork -c N"
        if one_worker
        else "N workers, each -P prefork -c 1"
    )
    print(
        f"workers: celery -A kikipounamu worker -Q asr, {layout}, -l"
        f" {cfg.worker_log_level}; ASR_ENGINE=synthetic, ASR_BATCH_JOBS=1"
        " (micro-batching off: see the docstring)"
    )
    print(
        f"work: scale {plan['jobs']} jobs x {plan['job_seconds']:g} s at rtf"
        f" {plan['rtf']:g} on {','.join(map(str, plan['processes']))} processes;"
        f" fan-out {plan['fanout_minutes']:g} min at rtf {plan['fanout_rtf']:g} on"
        f" {','.join(map(str, plan['fanout_processes']))}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--only", choices=PHASES, action="append", help="repeatable")
    parser.add_argument("--processes", help="comma-separated, e.g. 1,2,4,8,16")
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--job-seconds", type=float, help="audio seconds per job")
    parser.add_argument("--rtf", type=float, help="synthetic engine's, scale phase")
    parser.add_argument("--fanout-minutes", type=float)
    parser.add_argument("--fanout-rtf", type=float)
    parser.add_argument("--fanout-processes", help="comma-separated, e.g. 1,4,8")
    parser.add_argument(
        "--one-worker",
        action="store_true",
        help="one worker of --concurrency N instead of N workers of 1",
    )
    parser.add_argument("--worker-log-level", default="info")
    args = parser.parse_args()
    plan = dict(QUICK if args.quick else FULL)
    for key in ("jobs", "job_seconds", "rtf", "fanout_minutes", "fanout_rtf"):
        if getattr(args, key) is not None:
            plan[key] = getattr(args, key)
    for key in ("processes", "fanout_processes"):
        if getattr(args, key):
            plan[key] = [int(n) for n in getattr(args, key).split(",")]
    if min(plan["rtf"], plan["fanout_rtf"]) <= 0:
        parser.error("the rtf must be above 0: the work must be the engine's sleep")
    cfg = pl.Config(
        web_workers=1,  # it only takes the uploads, before the clock starts
        worker_pool="prefork",
        worker_concurrency=1,
        worker_log_level=args.worker_log_level,
        what_if=[],
    )
    started = time.monotonic()
    pl.use_bench_dir(SCALE_DIR)
    shutil.rmtree(pl.LOG_DIR, ignore_errors=True)  # the last run's logs only
    # SIGTERM ends the run as Ctrl-C does: the finally blocks stop every child.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with pl.own_redis() as cfg.redis:
        return run(cfg, plan, args, started)


def run(
    cfg: pl.Config, plan: dict[str, Any], args: argparse.Namespace, started: float
) -> int:
    cfg.database = pl.configure_environment()
    pl.setup_django()
    pl.redis_client().flushdb()
    print_header(cfg, plan, args.one_worker)
    phases = {"scale": phase_scale, "fanout": phase_fanout}
    figures: list[pl.Figure] = []
    try:
        with pl.stack(cfg) as s:
            base = s.start_web()
            warm = clip_of(WARM_UP_SECONDS, "warm-up.wav")
            bench = Bench(
                stack=s, base=base, one_worker=args.one_worker, warm_up_clip=warm
            )
            for name in args.only or list(PHASES):
                print(f"[{name}]", flush=True)
                figures += phases[name](bench, plan)
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    finally:
        with contextlib.suppress(Exception):
            pl.redis_client().flushdb()
            pl.remove_bench_users()
        shutil.rmtree(pl.BENCH_DIR / "media", ignore_errors=True)
    print()
    print("=" * 80)
    load1, load5, _ = os.getloadavg()
    print(
        f"load average now {load1:.1f} / {load5:.1f}; reference loop"
        f" {pl.reference_loop_ms():.0f} ms (lower is faster)"
    )
    pl.print_figures(figures)
    print(f"total run time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
