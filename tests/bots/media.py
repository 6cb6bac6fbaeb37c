"""Recordings as Telegram clients send them, made at test time with PyAV.

A voice message is Opus in an Ogg container at 48 kHz mono; a round video is an MP4
with an AAC track. Speech comes from espeak-ng, silence-free tones from numpy.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from asr import audio
from tests.speech import espeak

RATE = audio.SAMPLE_RATE
_CHUNK = 1024


def tone(seconds: float, frequency: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def speech(text: str, directory: Path) -> np.ndarray:
    wav = espeak(text, directory / "espeak.wav")
    return audio.decode(wav, max_seconds=600, timeout=60)


def _encode(out: Any, stream: Any, samples: np.ndarray) -> None:
    ctx = stream.codec_context
    resampler = av.AudioResampler(format=ctx.format, layout=ctx.layout, rate=ctx.rate)
    for start in range(0, len(samples), _CHUNK):
        frame = av.AudioFrame.from_ndarray(
            samples[start : start + _CHUNK].reshape(1, -1), format="flt", layout="mono"
        )
        frame.sample_rate = RATE
        frame.pts = start
        frame.time_base = Fraction(1, RATE)
        for resampled in resampler.resample(frame):
            out.mux(stream.encode(resampled))
    for resampled in resampler.resample(None):
        out.mux(stream.encode(resampled))
    out.mux(stream.encode(None))


def voice_note(samples: np.ndarray, path: Path) -> Path:
    """OGG/Opus, 48 kHz mono, 32 kbit/s: what Telegram's apps record."""
    with av.open(str(path), "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=48_000, layout="mono")
        stream.bit_rate = 32_000
        _encode(out, stream, samples)
    return path


def round_video(samples: np.ndarray, path: Path) -> Path:
    """An MP4 with a small picture and an AAC track, like a video note."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=RATE, layout="mono")
        stream.bit_rate = 48_000
        picture = out.add_stream("mpeg4", rate=10)
        picture.width, picture.height, picture.pix_fmt = 64, 64, "yuv420p"
        _encode(out, stream, samples)
        for index in range(max(1, round(len(samples) / RATE * 10))):
            pixels = np.full((64, 64, 3), index * 7 % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            out.mux(picture.encode(frame))
        out.mux(picture.encode(None))
    return path
