"""Audio in which nobody speaks, and speech set among pauses, made at test time.

Levels are RMS in dBFS, 0 dBFS being an RMS of 1.0 in float samples (full scale is
[-1, 1]): -60 dBFS is a quiet room through a good microphone, -50 dBFS through a
laptop's, -40 dBFS a fan or a hissy preamp. Noise comes from fixed seeds, so every run hears the same samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from asr import audio

SAMPLE_RATE = audio.SAMPLE_RATE


def silence(seconds: float) -> np.ndarray:
    """Digital silence: float32 zeros, 16 kHz mono."""
    return np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32)


def dither(seconds: float, *, seed: int = 0) -> np.ndarray:
    """Silence as a 16-bit recorder writes it: samples of -1, 0 or +1 LSB."""
    rng = np.random.default_rng(seed)
    lsb = rng.integers(-1, 2, round(seconds * SAMPLE_RATE))
    return (lsb / 32768).astype(np.float32)


def hum(seconds: float, *, dbfs: float, frequency: float = 50.0) -> np.ndarray:
    """Mains hum: a sine at an RMS of ``dbfs``."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    amplitude = np.sqrt(2) * 10 ** (dbfs / 20)
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def noise(
    seconds: float, *, dbfs: float, colour: str = "white", seed: int = 0
) -> np.ndarray:
    """Gaussian noise at an RMS of ``dbfs``: ``white`` (flat spectrum) or ``pink``
    (power falling 3 dB an octave, closer to a room's rumble)."""
    n = round(seconds * SAMPLE_RATE)
    rng = np.random.default_rng(seed)
    if colour == "white":
        signal = rng.standard_normal(n)
    elif colour == "pink":
        freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
        freqs[0] = freqs[1]  # no infinite DC term
        spectrum = rng.standard_normal(freqs.size) + 1j * rng.standard_normal(
            freqs.size
        )
        signal = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    else:
        raise ValueError(f"no {colour!r} noise; white or pink")
    rms = float(np.sqrt(np.mean(signal**2)))
    return (signal / rms * 10 ** (dbfs / 20)).astype(np.float32)


def with_pauses(
    parts: Sequence[np.ndarray], pauses: Sequence[float]
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """``parts`` one after another with ``pauses`` (seconds of silence) before,
    between and after them (one more pause than parts). Returns the samples and
    where each part lies in them, in seconds."""
    if len(pauses) != len(parts) + 1:
        raise ValueError("one pause before each part and one after the last")
    pieces = [silence(pauses[0])]
    spans = []
    at = pieces[0].size
    for part, pause in zip(parts, pauses[1:], strict=True):
        spans.append((at / SAMPLE_RATE, (at + part.size) / SAMPLE_RATE))
        pieces += [part.astype(np.float32), silence(pause)]
        at += part.size + pieces[-1].size
    return np.concatenate(pieces), spans


def add(samples: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``samples`` with ``background`` (at least as long) mixed under them."""
    return (samples + background[: samples.size]).astype(np.float32)
