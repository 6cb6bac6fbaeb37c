"""The engine a worker process holds: loaded once per process, never per task."""

from __future__ import annotations

import logging
import threading
from typing import Any

from django.conf import settings

from asr.engines import Engine
from asr.engines import load_engine

logger = logging.getLogger(__name__)

_engine: Engine | None = None
_lock = threading.Lock()


def engine_options() -> dict[str, Any]:
    return {
        "model": settings.ASR_MODEL,
        "device": settings.ASR_DEVICE,
        "compute_type": settings.ASR_COMPUTE_TYPE,
        "threads": settings.ASR_THREADS,
        "beam_size": settings.ASR_BEAM_SIZE,
        "rtf": settings.ASR_SYNTHETIC_RTF,
    }


def get_engine() -> Engine:
    global _engine
    if _engine is None:
        with _lock:
            if _engine is None:
                _engine = load_engine(settings.ASR_ENGINE, **engine_options())
    return _engine
