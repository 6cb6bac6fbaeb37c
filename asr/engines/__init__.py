"""ASR engines, chosen by name. Free of Django: options come in as arguments."""

from __future__ import annotations

from typing import Any

from asr.engines.base import Engine
from asr.engines.base import EngineError
from asr.engines.base import EngineTransientError
from asr.engines.base import Segment
from asr.engines.base import TranscriptionResult
from asr.engines.base import Word

__all__ = [
    "ENGINE_NAMES",
    "Engine",
    "EngineError",
    "EngineTransientError",
    "Segment",
    "TranscriptionResult",
    "Word",
    "load_engine",
]

ENGINE_NAMES = ("whisper", "funasr", "synthetic")


def load_engine(name: str, **options: Any) -> Engine:
    """Build the engine ``name``; expensive (loads a model): once per process."""
    if name == "whisper":
        from asr.engines.whisper import WhisperEngine

        return WhisperEngine(**options)
    if name == "funasr":
        from asr.engines.funasr import FunASREngine

        return FunASREngine(**options)
    if name == "synthetic":
        from asr.engines.synthetic import SyntheticEngine

        return SyntheticEngine(**options)
    raise EngineError(
        "unknown_engine",
        f"ASR_ENGINE={name!r} is not an engine; choose one of {', '.join(ENGINE_NAMES)}.",
    )
