"""Dictation clips for the live benchmarks: espeak-ng saying tests/speech.py's
sentences with pauses between them, and where each sentence lies in the clip.

    from bench.live_clips import make_clips, start_offset
    clips = make_clips(4, seed=0)   # the same four clips every run (one espeak-ng)

Every live benchmark that compares two systems streams the clips of one
``make_clips(n, seed)`` call, stream i starting ``start_offset(i, n)`` seconds after
the first (so that the sentences of n streams do not all end at the same moment),
so both hear the same samples at the same times and are scored against the same
sentences. A clip is 16 kHz mono 16-bit PCM: half a second of digital
silence, then sentences drawn from SENTENCES (shuffled by the seed, each said at
a rate of 140 to 170 words a minute), each followed by 1.0 to 1.5 s of silence,
until the clip reaches its length (drawn between 75 % and 100 % of ``seconds``)
or the next sentence would take it past ``seconds``. A sentence's span runs from
its first to its last non-silent sample, so ``speech_end_s`` is the moment its
last sound stops.

Only numpy and tests/speech.py (espeak-ng, jiwer) are needed: espeak-ng's WAV is
read with the standard library and resampled from its 22.05 kHz by FFT.
"""

from __future__ import annotations

import random
import sys
import tempfile
import wave
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.speech import SENTENCES  # noqa: E402
from tests.speech import espeak  # noqa: E402

SAMPLE_RATE = 16_000
LEAD_SECONDS = 0.5
GAP_SECONDS = (1.0, 1.5)
WORDS_PER_MINUTE = (140, 170)
# espeak-ng ends a sentence with a fade far below this; int16 units.
SILENCE_LEVEL = 64


# Streams' starts spread over about one sentence and its pause.
STAGGER_SECONDS = 3.0


@dataclass(frozen=True)
class Clip:
    """One stream's audio and the sentences said in it.

    ``utterances`` holds ``(speech_start_s, speech_end_s, text)`` in clip seconds.
    """

    pcm16: bytes
    utterances: list[tuple[float, float, str]]
    sample_rate: int = SAMPLE_RATE

    @property
    def seconds(self) -> float:
        return len(self.pcm16) / 2 / self.sample_rate

    @property
    def reference(self) -> str:
        return " ".join(text for _, _, text in self.utterances)

    def float32(self) -> np.ndarray:
        return (np.frombuffer(self.pcm16, dtype="<i2") / 32768.0).astype(np.float32)


def make_clips(n: int, seed: int = 0, *, seconds: float = 40.0) -> list[Clip]:
    """``n`` different clips, the same for the same ``n``, ``seed`` and ``seconds``
    (clip i depends only on ``seed`` and i, so the first clips of a larger set are
    those of a smaller one)."""
    return [_clip(random.Random(f"{seed}:{i}"), seconds) for i in range(n)]


def start_offset(i: int, n: int) -> float:
    """Seconds after the first stream's start at which stream ``i`` of ``n`` starts."""
    return STAGGER_SECONDS * i / n


def _clip(rng: random.Random, seconds: float) -> Clip:
    target = rng.uniform(0.75 * seconds, seconds) * SAMPLE_RATE
    pieces = [np.zeros(round(LEAD_SECONDS * SAMPLE_RATE), dtype=np.int16)]
    at = pieces[0].size
    utterances: list[tuple[float, float, str]] = []
    order: list[str] = []
    while at < target:
        if not order:
            order = list(SENTENCES)
            rng.shuffle(order)
        text = order.pop()
        speech = _said(text, rng.randint(*WORDS_PER_MINUTE))
        gap = np.zeros(round(rng.uniform(*GAP_SECONDS) * SAMPLE_RATE), dtype=np.int16)
        if utterances and at + speech.size + gap.size > seconds * SAMPLE_RATE:
            break
        utterances.append((at / SAMPLE_RATE, (at + speech.size) / SAMPLE_RATE, text))
        pieces += [speech, gap]
        at += speech.size + gap.size
    return Clip(np.concatenate(pieces).astype("<i2").tobytes(), utterances)


@cache
def _said(text: str, words_per_minute: int) -> np.ndarray:
    """espeak-ng saying ``text``, 16 kHz int16, cut to its first and last sound."""
    with tempfile.TemporaryDirectory() as tmp:
        path = espeak(text, Path(tmp) / "said.wav", words_per_minute=words_per_minute)
        with wave.open(str(path), "rb") as wav:
            if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
                raise ValueError("espeak-ng wrote other than 16-bit mono")
            rate = wav.getframerate()
            samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    resampled = _resample(samples.astype(np.float64), rate, SAMPLE_RATE)
    loud = np.flatnonzero(np.abs(resampled) > SILENCE_LEVEL)
    if loud.size == 0:
        raise ValueError(f"espeak-ng said nothing for {text!r}")
    cut = resampled[loud[0] : loud[-1] + 1]
    return np.clip(np.rint(cut), -32768, 32767).astype(np.int16)


def _resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling of a whole sentence by FFT: the spectrum cut (or
    padded) to the new length. Exact for a periodic signal; a sentence starts and
    ends in silence, so the wrap-around costs nothing audible."""
    if rate == target:
        return samples
    size = round(samples.size * target / rate)
    spectrum = np.fft.rfft(samples)
    kept = np.zeros(size // 2 + 1, dtype=complex)
    common = min(kept.size, spectrum.size)
    kept[:common] = spectrum[:common]
    return np.fft.irfft(kept, size) * (size / samples.size)
