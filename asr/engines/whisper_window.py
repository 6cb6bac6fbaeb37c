"""Whisper on a short clip without encoding 30 s: the window fitted to the clip.

Whisper's encoder always reads a 30 s window; faster-whisper pads every clip to it.
For tiny.en on one CPU thread that is 0.40-0.48 s of a 0.6 s call, whatever the
clip's length, and a live stream asks for a call per partial and per final.
CTranslate2 (4.x) encodes shorter windows too, at a cost in proportion: 4 s of
speech with 6 s of padding costs 0.07 s to encode. Whisper was trained on padded
30 s windows, so a window cut at the speech hallucinates (WER 0.82 with no padding,
0.17-0.22 with 1 s, on tests/speech.py's sentences); with 6 s of silence after the
speech it reads about as well as the full window at a third of the cost
(bench/whisper_window.py, 36 clips: 0.134 against 0.120, 178 against 627 ms; other
cuts of the same sentences 0.095 against 0.104; bench/live.py's finals 9.7 % against
11.3 %).

Only the plain case is done here (no word times, no VAD filter, no temperature
asked for): one decode at temperature 0, its segments from Whisper's own timestamp
tokens. A decode faster-whisper would have retried at a higher temperature (a
repetition loop, a low log-probability) returns None, and the caller transcribes
the clip the usual way instead, unless told not to retry: that way costs up to six
30 s decodes (3.6-4.1 s on one thread, bench/live.py's backlog phase), and a live
partial of half a sentence fails the checks often and is replaced within a second.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING
from typing import Any

import numpy as np

from asr.engines.base import Segment
from asr.engines.base import TranscriptionResult

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

# Silence after the speech, in seconds (bench/whisper_window.py's sweep: 4-7 s all
# matched the full window; less hallucinates, more only costs). A clip too long for
# all of it inside the 30 s window gets what is left, down to the least.
PADDING_SECONDS = 6.0
LEAST_PADDING_SECONDS = 4.0
# Whisper's window, in feature frames of 10 ms.
FULL_FRAMES = 3000
FRAMES_PER_SECOND = 100
# faster-whisper's defaults for when a decode is not to be trusted (its
# compression_ratio_threshold and log_prob_threshold) and for when a window holds
# no speech (no_speech_threshold).
COMPRESSION_RATIO_LIMIT = 2.4
LOG_PROB_LIMIT = -1.0
NO_SPEECH_LIMIT = 0.6
# Tokens a second of speech can need, generously (fast speech is ~4): a bound on a
# runaway decode's cost. Plus Whisper's own cap on a prompt and its text.
TOKENS_PER_SECOND = 12
MIN_NEW_TOKENS = 24
# Seconds per timestamp token.
TIME_PRECISION = 0.02


def fits(samples: np.ndarray, sample_rate: int) -> bool:
    """Whether the clip leaves room for the padding inside Whisper's window."""
    seconds = len(samples) / sample_rate
    return 0 < seconds <= FULL_FRAMES / FRAMES_PER_SECOND - LEAST_PADDING_SECONDS


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def transcribe(
    model: WhisperModel,
    samples: np.ndarray,
    *,
    language: str | None,
    beam_size: int,
    prompt: str | None,
    retry: bool = True,
) -> TranscriptionResult | None:
    """The clip's text from one decode of a fitted window, or (with ``retry``) None
    where faster-whisper would have decoded again (the caller's usual path then)."""
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_suppressed_tokens

    duration = len(samples) / 16_000
    features = model.feature_extractor(samples.astype(np.float32, copy=False))
    frames = min(
        FULL_FRAMES,
        features.shape[-1] + int(PADDING_SECONDS * FRAMES_PER_SECOND),
    )
    features = np.pad(features, ((0, 0), (0, frames - features.shape[-1])))
    encoded = model.encode(np.ascontiguousarray(features))
    multilingual = bool(model.model.is_multilingual)
    if multilingual and not language:
        token, _ = model.model.detect_language(encoded)[0][0]
        language = token[2:-2]
    tokenizer = Tokenizer(
        model.hf_tokenizer,
        multilingual,
        task="transcribe",
        language=language if multilingual else None,
    )
    start_tokens: list[int] = []
    if prompt:
        # As faster-whisper does: the previous text's tokens, at most half the
        # model's context, before the start of transcript.
        text_tokens = tokenizer.encode(" " + prompt.strip())
        start_tokens = [
            tokenizer.sot_prev,
            *text_tokens[-(model.max_length // 2 - 1) :],
        ]
    start_tokens += list(tokenizer.sot_sequence)
    new_tokens = max(MIN_NEW_TOKENS, int(TOKENS_PER_SECOND * duration))
    result = model.model.generate(
        encoded,
        [start_tokens],
        beam_size=beam_size,
        max_length=min(model.max_length, len(start_tokens) + new_tokens),
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=True,
        suppress_tokens=get_suppressed_tokens(tokenizer, (-1,)),
        # Whisper's rule: the first timestamp within a second of the window's start.
        max_initial_timestamp_index=50,
    )[0]
    tokens = [t for t in result.sequences_ids[0] if t != tokenizer.eot]
    text_tokens_only = [t for t in tokens if t < tokenizer.eot]
    text = tokenizer.decode(text_tokens_only).strip()
    # faster-whisper's average log-probability of a sequence (length penalty 1).
    avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
    meta = {"window_seconds": round(frames / FRAMES_PER_SECOND, 2)}
    if result.no_speech_prob > NO_SPEECH_LIMIT and avg_logprob < LOG_PROB_LIMIT:
        return TranscriptionResult("", language or "en", [], meta)
    if retry and (
        compression_ratio(text) > COMPRESSION_RATIO_LIMIT
        or avg_logprob < LOG_PROB_LIMIT
    ):
        return None
    return TranscriptionResult(
        text, language or "en", segments_of(tokens, tokenizer, duration), meta
    )


def segments_of(tokens: list[int], tokenizer: Any, duration: float) -> list[Segment]:
    """Whisper's timestamped output (``<|t0|> text <|t1|><|t1|> text <|t2|>``) as
    segments, kept inside the clip; text after the last timestamp runs to its end."""
    segments: list[Segment] = []
    start: float | None = None
    pending: list[int] = []

    def close(end: float) -> None:
        text = tokenizer.decode(pending).strip()
        if text:
            begin = min(start or 0.0, duration)
            segments.append(Segment(round(begin, 3), round(max(begin, end), 3), text))
        pending.clear()

    for token in tokens:
        if token < tokenizer.timestamp_begin:
            if token < tokenizer.eot:
                pending.append(token)
            continue
        at = min((token - tokenizer.timestamp_begin) * TIME_PRECISION, duration)
        if pending:
            close(at)
            start = None
        else:
            start = at
    if pending:
        close(duration)
    return segments
