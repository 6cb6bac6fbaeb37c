"""Benchmark of one ASR engine and model, outside and inside the pipeline.

    .venv/bin/python bench/engine.py --engine funasr --model var/bench-models/sv-full
    .venv/bin/python bench/engine.py --engine funasr --build-full var/bench-models/sv-full
    .venv/bin/python bench/engine.py --engine whisper

Each measurement runs in a fresh child process, so load time and peak RSS are those
of one worker process holding the model and nothing else:

  load         seconds from nothing to a loaded engine (imports included, and
               separately without them), RSS after load (anonymous / file-backed),
               model file size
  rtf-10s      single-stream real-time factor (engine seconds / audio seconds) on
  rtf-60s      a 10 s and a 60 s clip, after one warm-up call
  batch        transcribe_batch over N x 10 s clips: audio seconds per wall second
  peak         peak RSS of the process (ru_maxrss) and its ratio to the model file
               (issue 3: <= 2), and peak CUDA memory on a GPU
  pipeline     with --pipeline: jobs through a real web process, Redis and a Celery
               worker running the same engine, audio-s per wall-s, against the raw
               engine on the same clips one after another in a child process; the
               share of the worker's wall time spent in the engine (the jobs'
               engine seconds over the same window, so machine load drifting
               between the two runs cancels out); and the peak RSS of the worker's
               pool process, the one holding the model, after one more 60 s job

The load average is printed at the start and the end: on a shared machine the
throughput figures move with it, the memory figures do not.

``--build-full DIR`` first writes a random full-size SenseVoiceSmall (~234 M
parameters; asr.engines.tiny_models) when DIR has none. The clips are noise: a
random model's cost does not depend on what is said.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ comes first on the path, and bench/telegram.py would
# shadow the telegram package the project imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

SR = 16_000


def rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss / 2**20)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_status_mb(pid: int | str = "self") -> dict[str, float]:
    """VmHWM (peak RSS), VmRSS, RssAnon and RssFile of a process, in MB (Linux)."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def clip(seconds: float, seed: int = 0) -> Any:
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": args.model or "",
        "device": args.device,
        "threads": args.threads,
        "batch_size": args.batch,
        "compute_type": args.compute_type,
        "max_segment_seconds": args.segment,
        "batch_seconds": args.batch_seconds,
    }


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One process: load, measure, report JSON."""
    out: dict[str, Any] = {"rss_start_mb": round(rss_mb(), 1)}
    started = time.perf_counter()
    if args.engine == "funasr":
        import torch

        # As the engine imports FunASR: only what the model's config names.
        from asr.engines.funasr import import_funasr
        from asr.engines.funasr import model_config

        import_funasr([model_config(args.model)])
    imported = time.perf_counter()
    from asr.engines import load_engine

    engine = load_engine(args.engine, **engine_options(args))
    loaded = time.perf_counter()
    out["load_s"] = round(loaded - started, 2)
    out["load_without_imports_s"] = round(loaded - imported, 2)
    out["rss_after_load_mb"] = round(rss_mb(), 1)
    out["peak_rss_after_load_mb"] = round(peak_rss_mb(), 1)
    out["after_load"] = proc_status_mb()
    out["device"] = engine.device
    if args.model and Path(args.model, "model.pt").is_file():
        out["model_file_mb"] = round(
            Path(args.model, "model.pt").stat().st_size / 2**20, 1
        )
    # One-off costs; the raw run warms up on a clip as long as its own, as the
    # pipeline does with its first job.
    engine.transcribe(clip(args.clip_seconds if args.measure == "raw" else 1.0), SR)
    if args.measure == "rtf":
        for seconds in (10, 60):
            samples = clip(seconds, seed=seconds)
            t0 = time.perf_counter()
            engine.transcribe(samples, SR, None)
            out[f"rtf_{seconds}s"] = round((time.perf_counter() - t0) / seconds, 4)
    elif args.measure == "batch":
        clips = [clip(10, seed=i) for i in range(args.batch_clips)]
        t0 = time.perf_counter()
        engine.transcribe_batch(clips, SR)
        wall = time.perf_counter() - t0
        out["batch_clips"] = len(clips)
        out["batch_x_realtime"] = round(10 * len(clips) / wall, 2)
    elif args.measure == "raw":
        clips = [clip(args.clip_seconds, seed=i) for i in range(args.jobs)]
        t0 = time.perf_counter()
        for samples in clips:
            engine.transcribe(samples, SR, None)
        wall = time.perf_counter() - t0
        out["raw_x_realtime"] = round(args.clip_seconds * len(clips) / wall, 3)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    out["rss_end_mb"] = round(rss_mb(), 1)
    out["at_end"] = proc_status_mb()
    if str(engine.device).startswith("cuda"):
        import torch

        out["peak_vram_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def run_child(args: argparse.Namespace, measure: str) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", "--measure", measure]
    for key in (
        "engine",
        "model",
        "device",
        "threads",
        "batch",
        "batch_clips",
        "compute_type",
        "segment",
        "batch_seconds",
        "jobs",
        "clip_seconds",
    ):
        value = getattr(args, key)
        if value not in (None, ""):
            argv += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child {measure} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """Jobs through web + worker with the same engine; audio-s per wall-s."""
    import wave

    import numpy as np

    # The test settings with a run of its own: a fresh SQLite file, media folder and
    # Redis key prefix, shared with the web and worker processes started below.
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ["KIKI_TEST_RUN"] = f"bench-engine-{os.getpid()}"
    os.environ["KIKI_TEST_SUBPROCESS"] = "1"
    import django

    django.setup()
    from kikipounamu import local

    local.prepare()  # var/, the secret key, the embedded Redis
    from django.core.management import call_command

    from tests import processes

    call_command("migrate", verbosity=0)
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from asr.models import Transcription

    workdir = ROOT / "var" / "bench" / "engine"
    workdir.mkdir(parents=True, exist_ok=True)

    def write_wav(path: Path, seconds: float, seed: int) -> Path:
        pcm = (clip(seconds, seed=seed) * 32767).astype(np.int16)
        with wave.open(str(path), "wb") as fh:
            fh.setnchannels(1)
            fh.setsampwidth(2)
            fh.setframerate(SR)
            fh.writeframes(pcm.tobytes())
        return path

    paths = [
        write_wav(workdir / f"clip{i}.wav", args.clip_seconds, i)
        for i in range(args.jobs)
    ]
    long_clip = write_wav(workdir / "clip60.wav", 60, 60)
    env = {
        "ASR_ENGINE": args.engine,
        "ASR_MODEL": args.model or "",
        "ASR_DEVICE": args.device,
        "ASR_THREADS": str(args.threads),
        "ASR_BATCH_SIZE": str(args.batch),
        "ASR_MAX_SEGMENT_SECONDS": str(args.segment),
        "ASR_CALL_AUDIO_SECONDS": str(args.batch_seconds),
        "OMP_NUM_THREADS": str(args.threads),
    }
    user = get_user_model().objects.create(username=f"bench-{time.time_ns()}")
    token = Token.objects.create(user=user)
    worker = processes.start_worker(queues="asr", **env)
    web, base = processes.start_web()
    try:
        import requests

        session = requests.Session()
        session.headers["Authorization"] = f"Token {token.key}"
        worker.wait_for_log("model ", timeout=600)

        def submit(path: Path) -> str:
            with path.open("rb") as fh:
                response = session.post(
                    f"{base}/api/v1/transcriptions", files={"file": fh}, timeout=60
                )
            response.raise_for_status()
            return str(response.json()["id"])

        def wait_for(ids: list[str]) -> None:
            while Transcription.objects.filter(pk__in=ids, finished_at=None).exists():
                time.sleep(0.05)

        # Warm-up job, then all at once: the queue is never empty.
        wait_for([submit(paths[0])])
        ids = [submit(path) for path in paths]
        wait_for(ids)
        jobs = list(Transcription.objects.filter(pk__in=ids))
        # From the first job's start to the last one's end: submission excluded.
        started = min(j.started_at for j in jobs if j.started_at)
        finished = max(j.finished_at for j in jobs if j.finished_at)
        wall = (finished - started).total_seconds()
        engine_seconds = sum(j.engine_seconds or 0 for j in jobs)
        failed = [j.error_code for j in jobs if j.status != "succeeded"]
        # The model lives in the pool process (loaded at its start); its peak RSS
        # after one long job is the worker figure of issue 3.
        wait_for([submit(long_clip)])
        import psutil

        pool = psutil.Process(worker.popen.pid).children()
        return {
            "pipeline_x_realtime": round(args.clip_seconds * len(ids) / wall, 3),
            "pipeline_engine_share": round(engine_seconds / wall, 4),
            "pipeline_failed": failed,
            "worker_pool": [proc_status_mb(child.pid) for child in pool],
        }
    finally:
        worker.stop()
        web.stop()
        from django.conf import settings

        database = str(settings.DATABASES["default"]["NAME"])
        for suffix in ("", "-wal", "-shm"):
            Path(database + suffix).unlink(missing_ok=True)
        shutil.rmtree(settings.MEDIA_ROOT, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="funasr")
    parser.add_argument("--model", default="")
    parser.add_argument("--build-full", metavar="DIR", default="")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="segments per call")
    parser.add_argument("--batch-clips", type=int, default=8)
    parser.add_argument("--compute-type", default="")
    parser.add_argument("--segment", type=float, default=30.0)
    parser.add_argument(
        "--batch-seconds",
        type=float,
        default=0.0,
        help="audio seconds per engine call (ASR_CALL_AUDIO_SECONDS; 0: engine default)",
    )
    parser.add_argument("--pipeline", action="store_true")
    parser.add_argument(
        "--pipeline-only", action="store_true", help="skip load/RTF/batch figures"
    )
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", default="rtf", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.build_full:
        from asr.engines.tiny_models import build_sensevoice

        if not Path(args.build_full, "model.pt").is_file():
            build_sensevoice(args.build_full, size="full")
        args.model = args.build_full
    print(
        f"engine {args.engine}, model {args.model or '(default)'}, device "
        f"{args.device}, {args.threads} threads, batch {args.batch}, "
        f"{os.cpu_count()} CPUs; load average {load_average()}"
    )
    if not args.pipeline_only:
        single_and_batch(args)
    if args.pipeline or args.pipeline_only:
        compare_pipeline(args)
    print(f"load average      {load_average()} (at the end)")


def single_and_batch(args: argparse.Namespace) -> None:
    rtf = run_child(args, "rtf")
    print(
        f"load              {rtf['load_s']:.2f} s "
        f"({rtf['load_without_imports_s']:.2f} s without imports)"
    )
    if "model_file_mb" in rtf:
        print(f"model file        {rtf['model_file_mb']:.0f} MB")
    loaded = rtf["after_load"]
    print(
        f"RSS after load    {rtf['rss_after_load_mb']:.0f} MB "
        f"({loaded['RssAnon']:.0f} anonymous, {loaded['RssFile']:.0f} file-backed; "
        f"peak while loading {rtf['peak_rss_after_load_mb']:.0f} MB)"
    )
    print(f"device            {rtf['device']}")
    print(
        f"RTF 10 s clip     {rtf['rtf_10s']:.4f}  ({1 / rtf['rtf_10s']:.1f}x real time)"
    )
    print(
        f"RTF 60 s clip     {rtf['rtf_60s']:.4f}  ({1 / rtf['rtf_60s']:.1f}x real time)"
    )
    end = rtf["at_end"]
    print(
        f"peak RSS          {rtf['peak_rss_mb']:.0f} MB (the process holding the "
        f"model, over load, warm-up, 10 s and 60 s; {rtf['rss_end_mb']:.0f} MB held "
        f"after its last call: {end['RssAnon']:.0f} anonymous, "
        f"{end['RssFile']:.0f} file-backed)"
    )
    if "model_file_mb" in rtf:
        ratio = rtf["peak_rss_mb"] / rtf["model_file_mb"]
        print(f"peak RSS / model  {ratio:.2f} (target <= 2)")
    batch = run_child(args, "batch")
    print(
        f"batched           {batch['batch_x_realtime']:.1f}x real time "
        f"({batch['batch_clips']} x 10 s in one transcribe_batch, batch {args.batch}"
        f"); peak RSS {batch['peak_rss_mb']:.0f} MB"
    )
    for result in (rtf, batch):
        if "peak_vram_mb" in result:
            print(f"peak VRAM         {result['peak_vram_mb']:.0f} MB")


def compare_pipeline(args: argparse.Namespace) -> None:
    raw = run_child(args, "raw")
    pipe = pipeline(args)
    share = pipe["pipeline_x_realtime"] / raw["raw_x_realtime"]
    print(
        f"raw engine        {raw['raw_x_realtime']:.2f}x real time "
        f"({args.jobs} x {args.clip_seconds:g} s, one after another)"
    )
    print(
        f"through pipeline  {pipe['pipeline_x_realtime']:.2f}x real time "
        f"= {share:.1%} of raw (target >= 95%); failed: {pipe['pipeline_failed']}"
    )
    print(
        f"engine share      {pipe['pipeline_engine_share']:.1%} of the worker's wall "
        "time in the engine over the same jobs (load drift between the raw and the "
        "pipeline runs cancels out)"
    )
    model_file = Path(args.model, "model.pt") if args.model else None
    for status in pipe["worker_pool"]:
        line = (
            f"worker peak RSS   {status['VmHWM']:.0f} MB (Celery pool process "
            f"holding the model, after the jobs and one 60 s job; now "
            f"{status['RssAnon']:.0f} anonymous, {status['RssFile']:.0f} file-backed)"
        )
        if model_file is not None and model_file.is_file():
            ratio = status["VmHWM"] / (model_file.stat().st_size / 2**20)
            line += f"; / model {ratio:.2f} (target <= 2)"
        print(line)


if __name__ == "__main__":
    main()
