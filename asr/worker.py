"""The engine a worker process holds: loaded once per process, never per task."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from django.conf import settings

from asr.engines import Engine
from asr.engines import load_engine

logger = logging.getLogger(__name__)

_engine: Engine | None = None
_lock = threading.Lock()


def worker_gpus() -> list[str]:
    """GPUs given to this worker (``--gpus`` sets ASR_GPUS before the pool forks)."""
    value = os.environ.get("ASR_GPUS", settings.ASR_GPUS)
    return [gpu.strip() for gpu in value.split(",") if gpu.strip()]


def pinned_device() -> tuple[str, str]:
    """(device for the engine, label recorded on jobs) for this process.

    With GPUs listed, pool process i sees only GPU ``gpus[i mod n]`` (through
    CUDA_VISIBLE_DEVICES, set before anything in this process touches CUDA; a
    replacement process keeps its index, so its GPU). Without, ASR_DEVICE as is.
    """
    gpus = worker_gpus()
    if not gpus:
        return settings.ASR_DEVICE, ""
    from billiard.process import current_process

    index = getattr(current_process(), "index", None) or 0
    gpu = gpus[index % len(gpus)]
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    return "cuda", f"cuda:{gpu}"


def serves_live() -> bool:
    """Whether this worker consumes the live queues."""
    from kikipounamu.celery import app

    return bool(set(app.amqp.queues.consume_from or {}) & {"live", "live_partial"})


def engine_options() -> dict[str, Any]:
    device, label = pinned_device()
    return {
        "model": settings.ASR_MODEL,
        "device": device,
        "device_label": label,
        "compute_type": settings.ASR_COMPUTE_TYPE,
        # Live workers: more processes of fewer threads (LIVE_THREADS), so that a
        # final finds a process free while others run partials.
        "threads": settings.LIVE_THREADS if serves_live() else settings.ASR_THREADS,
        "beam_size": settings.ASR_BEAM_SIZE,
        "vad_filter": settings.ASR_WHISPER_VAD,
        "rtf": settings.ASR_SYNTHETIC_RTF,
        "synthetic_batches": settings.ASR_SYNTHETIC_BATCHES,
        "vad_model": settings.ASR_VAD_MODEL,
        "punc_model": settings.ASR_PUNC_MODEL,
        "allow_download": settings.ASR_ALLOW_DOWNLOAD,
        "use_itn": settings.ASR_USE_ITN,
        "batch_size": settings.ASR_BATCH_SIZE,
        "max_segment_seconds": settings.ASR_MAX_SEGMENT_SECONDS,
        "batch_seconds": settings.ASR_CALL_AUDIO_SECONDS,
    }


def recycle_if_over_vram() -> bool:
    """After a task: ask for this process to be replaced if CUDA memory stays
    above ASR_WORKER_MAX_VRAM_MB once the allocator's cache is released."""
    limit = settings.ASR_WORKER_MAX_VRAM_MB
    if not limit or _engine is None or not str(_engine.device).startswith("cuda"):
        return False
    import torch

    used_mb = torch.cuda.memory_reserved() / 2**20
    if used_mb > limit:
        torch.cuda.empty_cache()
        used_mb = torch.cuda.memory_reserved() / 2**20
    if used_mb <= limit:
        return False
    logger.warning(
        "process %d holds %.0f MB of CUDA memory (limit %d MB): recycling it",
        os.getpid(),
        used_mb,
        limit,
    )
    request_recycle()
    return True


def request_recycle() -> None:
    """Make this pool process exit after reporting its current task.

    billiard checks ``mem_rss()`` against worker_max_memory_per_child after every
    task and, past it, exits with EX_RECYCLE once the result is sent; settings keep
    that check on whenever a VRAM limit is set. Reporting a huge RSS reuses that
    clean path instead of killing the process mid-acknowledgement.
    """
    import billiard.pool

    billiard.pool.mem_rss = lambda: 1 << 60  # type: ignore[attr-defined]


def get_engine() -> Engine:
    global _engine
    if _engine is None:
        with _lock:
            if _engine is None:
                _engine = load_engine(settings.ASR_ENGINE, **engine_options())
                _report(_engine)
    return _engine


def _report(engine: Engine) -> None:
    """Tell the doors what this worker can transcribe (asr.selectors.served_languages)."""
    hostname = os.environ.get("KIKI_WORKER_HOSTNAME")
    if not hostname:
        return  # not a Celery pool process (a command, a test)
    from asr.ops import redis_state

    languages = getattr(engine, "languages", None)
    try:
        redis_state.engine_report(
            hostname=hostname,
            engine=engine.name,
            languages=list(languages) if languages is not None else None,
        )
    except Exception:
        logger.warning("engine report not written", exc_info=True)
        return
    logger.info(
        "engine reported: %s, languages %s",
        engine.name,
        ",".join(languages) if languages is not None else "any",
    )
