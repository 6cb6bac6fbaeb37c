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
