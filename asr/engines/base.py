"""What every engine takes and returns. No Django here: a GPU machine runs a worker
with nothing but the broker URL and this package."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Protocol

import numpy as np


@dataclass
class Word:
    start: float
    end: float
    text: str
    probability: float | None = None


@dataclass
class Segment:
    start: float
    end: float
    text: str
    words: list[Word] | None = None
    # The decoder's figures for the segment where the engine has them and the call
    # asked (``segment_details``): Whisper's avg_logprob, compression_ratio,
    # no_speech_prob and temperature. Stored beside start and end.
    details: dict[str, float | None] | None = None


@dataclass
class TranscriptionResult:
    text: str
    language: str | None
    segments: list[Segment]
    # Engine-specific extras kept on the job (tags, probabilities, ...).
    meta: dict[str, Any] = field(default_factory=dict)

    def segments_as_dicts(self) -> list[dict[str, Any]]:
        out = []
        for segment in self.segments:
            item = asdict(segment)
            if item["words"] is None:
                del item["words"]
            item.update(item.pop("details") or {})
            out.append(item)
        return out


class EngineError(Exception):
    """An engine cannot transcribe this input (a permanent, per-job failure)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EngineTransientError(Exception):
    """A failure worth retrying (for example running out of device memory)."""


class Engine(Protocol):
    """A loaded model. Built once per worker process, then called for every job.

    ``transcribe`` options every engine accepts: ``on_segment``, a callable given each
    segment as soon as it is known (progress); engines that only know segments at
    the end call it then, or not at all. A job may ask for more
    (``asr.services.job_options``): ``word_timestamps``, ``segment_details``,
    ``prompt``, ``temperature``; an engine ignores those it cannot give.
    """

    name: str
    model_name: str
    device: str
    # True when ``transcribe_batch`` runs clips together (one forward pass for many,
    # as FunASR on a GPU); False when it is a loop over ``transcribe``. A worker
    # takes other short jobs into a batch only for engines that batch: for the
    # others a batch buys no speed and puts more jobs in the way of one crash.
    batches_natively: bool
    # The languages it can be asked for (ISO 639-1 codes, as asr.languages); None:
    # any of them. Workers report it (asr.ops.redis_state), so that doors refuse a
    # language no worker serves instead of failing the job later.
    languages: tuple[str, ...] | None

    def transcribe(
        self,
        samples: np.ndarray,
        sample_rate: int = 16_000,
        language: str | None = None,
        **options: Any,
    ) -> TranscriptionResult: ...

    def transcribe_batch(
        self,
        clips: Sequence[np.ndarray],
        sample_rate: int = 16_000,
        languages: Sequence[str | None] | None = None,
        **options: Any,
    ) -> list[TranscriptionResult]: ...


class SequentialBatchMixin:
    """For engines with no batched inference: a batch is a loop over clips."""

    batches_natively = False

    def transcribe_batch(
        self,
        clips: Sequence[np.ndarray],
        sample_rate: int = 16_000,
        languages: Sequence[str | None] | None = None,
        **options: Any,
    ) -> list[TranscriptionResult]:
        langs = list(languages) if languages is not None else [None] * len(clips)
        return [
            self.transcribe(clip, sample_rate, lang, **options)  # type: ignore[attr-defined]
            for clip, lang in zip(clips, langs, strict=True)
        ]
