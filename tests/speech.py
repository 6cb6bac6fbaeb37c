"""Speech made in the test set-up with espeak-ng (a Debian package the test command
installs), so the suite ships no recordings and still hears real speech."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jiwer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things from the store.",
    "She sells sea shells by the sea shore.",
    "The weather today is sunny with a light breeze from the west.",
    "Our train leaves the station at half past seven in the morning.",
    "Speech recognition turns spoken words into written text.",
    "He bought three apples and two oranges at the market.",
    "The library closes early on public holidays.",
    "Open the window and let some fresh air into the room.",
    "We will meet again next week to finish the project.",
    "The children played football in the park after school.",
    "Remember to water the plants before you go on holiday.",
]

_normalise = jiwer.Compose(
    [
        jiwer.ToLowerCase(),
        jiwer.RemovePunctuation(),
        jiwer.RemoveMultipleSpaces(),
        jiwer.Strip(),
        jiwer.ReduceToListOfListOfWords(),
    ]
)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak(
    text: str, path: Path, *, voice: str = "en-us", words_per_minute: int = 150
) -> Path:
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(path), text],
        check=True,
        capture_output=True,
    )
    return path


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    return jiwer.wer(
        references,
        hypotheses,
        reference_transform=_normalise,
        hypothesis_transform=_normalise,
    )


def speech_stream(
    sentences: list[str],
    folder: Path,
    *,
    rate: int = 16_000,
    lead: float = 0.5,
    gap: float = 1.2,
    tail: float = 1.0,
) -> tuple[bytes, list[tuple[float, float, str]]]:
    """The sentences spoken one after another as one PCM16 mono stream at ``rate``,
    with ``gap`` seconds of silence between them; and where each one's speech is
    (its first and last sample above a whisper, in seconds) with its text."""
    import wave

    import numpy as np
    import soxr

    parts = [np.zeros(int(lead * rate), np.int16)]
    spans = []
    position = parts[0].size
    for i, text in enumerate(sentences):
        path = espeak(text, folder / f"stream-{i}.wav")
        with wave.open(str(path)) as wav:
            raw = np.frombuffer(wav.readframes(wav.getnframes()), np.int16)
            samples = soxr.resample(raw, wav.getframerate(), rate).astype(np.int16)
        loud = np.nonzero(np.abs(samples) > 300)[0]
        spans.append(((position + loud[0]) / rate, (position + loud[-1]) / rate, text))
        parts.append(samples)
        position += samples.size
        silence = np.zeros(
            int((gap if i < len(sentences) - 1 else tail) * rate), np.int16
        )
        parts.append(silence)
        position += silence.size
    return np.concatenate(parts).astype("<i2").tobytes(), spans
