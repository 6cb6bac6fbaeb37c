"""An engine for load tests only: it costs what you tell it to and knows no speech.

It sleeps for duration x ``rtf`` and answers a fixed marker text, so a benchmark can
measure the pipeline's own cost with the engine's cost set to zero (or anything else).
Never a default.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from asr.engines.base import Segment
from asr.engines.base import SequentialBatchMixin
from asr.engines.base import TranscriptionResult

MARKER_TEXT = "[synthetic transcript]"


class SyntheticEngine(SequentialBatchMixin):
    name = "synthetic"
    languages: tuple[str, ...] | None = None

    def __init__(self, *, rtf: float = 0.0, device: str = "cpu", **_: Any) -> None:
        self.rtf = rtf
        self.device = device
        self.model_name = f"synthetic-rtf{rtf:g}"

    def transcribe(
        self,
        samples: np.ndarray,
        sample_rate: int = 16_000,
        language: str | None = None,
        **options: Any,
    ) -> TranscriptionResult:
        duration = samples.shape[0] / sample_rate
        if self.rtf > 0:
            time.sleep(duration * self.rtf)
        return TranscriptionResult(
            text=MARKER_TEXT,
            language=language or "en",
            segments=[Segment(start=0.0, end=round(duration, 3), text=MARKER_TEXT)],
            meta={"rtf": self.rtf},
        )
