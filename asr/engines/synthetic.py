"""An engine for load tests only: it costs what you tell it to and knows no speech.

It sleeps for duration x ``rtf`` and answers a fixed marker text, so a benchmark can
measure the pipeline's own cost with the engine's cost set to zero (or anything else).
Never a default.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from asr.engines.base import Segment
from asr.engines.base import SequentialBatchMixin
from asr.engines.base import TranscriptionResult

MARKER_TEXT = "[synthetic transcript]"


class SyntheticEngine(SequentialBatchMixin):
    """``synthetic_batches``: stand in for an engine that batches natively (FunASR
    on a GPU), whose one call for a batch costs about what its longest clip would
    alone (the clips are padded to it and run in one pass)."""

    name = "synthetic"
    languages: tuple[str, ...] | None = None

    def __init__(
        self,
        *,
        rtf: float = 0.0,
        device: str = "cpu",
        synthetic_batches: bool = False,
        **_: Any,
    ) -> None:
        self.rtf = rtf
        self.device = device
        self.model_name = f"synthetic-rtf{rtf:g}"
        self.batches_natively = synthetic_batches

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
        return self._result(duration, language)

    def transcribe_batch(
        self,
        clips: Sequence[np.ndarray],
        sample_rate: int = 16_000,
        languages: Sequence[str | None] | None = None,
        **options: Any,
    ) -> list[TranscriptionResult]:
        if not self.batches_natively:
            return super().transcribe_batch(clips, sample_rate, languages, **options)
        longest = max((clip.shape[0] for clip in clips), default=0) / sample_rate
        if self.rtf > 0:
            time.sleep(longest * self.rtf)
        langs = list(languages) if languages is not None else [None] * len(clips)
        return [
            self._result(clip.shape[0] / sample_rate, lang)
            for clip, lang in zip(clips, langs, strict=True)
        ]

    def _result(self, duration: float, language: str | None) -> TranscriptionResult:
        return TranscriptionResult(
            text=MARKER_TEXT,
            language=language or "en",
            segments=[Segment(start=0.0, end=round(duration, 3), text=MARKER_TEXT)],
            meta={"rtf": self.rtf},
        )
