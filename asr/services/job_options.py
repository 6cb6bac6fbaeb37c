"""What a job may ask of the engine beyond its language: word times, the decoder's
per-segment figures, a prompt, a temperature (the OpenAI-compatible door's
parameters). Kept on the row under ``meta["options"]``, read by whoever runs the job
(a whole job, a batch member, a fanned-out chunk), and kept through its attempts.

Engines take what they know and ignore the rest (``Engine.transcribe``'s options).
"""

from __future__ import annotations

from dataclasses import asdict
from dataclasses import dataclass
from typing import Any

from kikipounamu.errors import ApplicationError

KEY = "options"

# Whisper's prompt is at most 224 tokens (half its 448-token context): about a
# thousand characters of English.
MAX_PROMPT_CHARS = 1000


@dataclass(frozen=True)
class JobOptions:
    # Each segment's words with their times.
    word_timestamps: bool = False
    # Each segment's avg_logprob, compression_ratio, no_speech_prob, temperature.
    segment_details: bool = False
    # Text the decoder is primed with (spelling of names, style).
    prompt: str = ""
    # Sampling temperature; None or 0: the engine's own (Whisper's falls back to
    # higher temperatures when a window decodes badly).
    temperature: float | None = None

    def __post_init__(self) -> None:
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise ApplicationError(
                f"The prompt is {len(self.prompt)} characters long; the limit is "
                f"{MAX_PROMPT_CHARS}.",
                code="invalid_prompt",
            )
        if self.temperature is not None and not 0 <= self.temperature <= 1:
            raise ApplicationError(
                f"temperature must be between 0 and 1, not {self.temperature}.",
                code="invalid_temperature",
            )

    def as_meta(self) -> dict[str, Any]:
        """For ``meta``: only what differs from the defaults (usually nothing)."""
        default = JobOptions()
        return {
            name: value
            for name, value in asdict(self).items()
            if value != getattr(default, name)
        }

    def engine_options(self) -> dict[str, Any]:
        """Keyword options for ``Engine.transcribe``."""
        options: dict[str, Any] = {}
        if self.word_timestamps:
            options["word_timestamps"] = True
        if self.segment_details:
            options["segment_details"] = True
        if self.prompt:
            options["prompt"] = self.prompt
        if self.temperature:
            options["temperature"] = self.temperature
        return options


def job_options(meta: dict[str, Any] | None) -> JobOptions:
    """A job's options, from its ``meta``; the defaults for a job that set none (or
    whose stored ones no longer make sense)."""
    stored = (meta or {}).get(KEY) or {}
    try:
        return JobOptions(
            word_timestamps=bool(stored.get("word_timestamps", False)),
            segment_details=bool(stored.get("segment_details", False)),
            prompt=str(stored.get("prompt", "")),
            temperature=stored.get("temperature"),
        )
    except (ApplicationError, TypeError, AttributeError):
        return JobOptions()


def kept_options(meta: dict[str, Any] | None) -> dict[str, Any]:
    """The part of ``meta`` that a new ``meta`` written by an attempt keeps: a retried
    or fanned-out job still asks for what it asked."""
    stored = (meta or {}).get(KEY)
    return {KEY: stored} if stored else {}
