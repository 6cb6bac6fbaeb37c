"""Cutting long audio into chunks at pauses, and the chunks' audio files.

No Django here, like ``asr.audio``: samples and limits come in as arguments.

Pauses are found with Silero VAD as faster-whisper ships it (``silero_vad_v6.onnx``
inside the faster-whisper wheel, run by onnxruntime on the CPU). faster-whisper is
already the default engine's requirement, so every worker, CPU or GPU, can split a
job with nothing more installed and nothing downloaded. FunASR's fsmn-vad would need
torch and funasr (GPU machines only), and its wheel pins an onnxruntime that conflicts
with the one installed here.
"""

from __future__ import annotations

import bisect
import wave
from collections.abc import Callable
from pathlib import Path
from typing import IO
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000

# A pause worth cutting in: VAD silence of at least this long. Speech regions are
# padded by SPEECH_PAD_MS each side, so the gap left between them is shorter.
MIN_SILENCE_MS = 300
SPEECH_PAD_MS = 100
# The VAD model runs over blocks of this many seconds: it would otherwise copy the
# whole file (a 4 h file is ~0.9 GB of float32) into its input batch at once.
VAD_BLOCK_SECONDS = 600.0
# A cut goes this long before speech resumes, where the pause is long enough (else:
# in its middle).
CUT_MARGIN_SECONDS = 0.5
# Frames for the quietest-point fallback (32 ms at 16 kHz, the VAD's window).
ENERGY_FRAME = 512

Span = tuple[int, int]


def speech_regions(
    samples: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    *,
    block_seconds: float = VAD_BLOCK_SECONDS,
) -> list[Span]:
    """Sample spans of speech found by Silero VAD, in order, over the whole clip."""
    from faster_whisper.vad import VadOptions
    from faster_whisper.vad import get_speech_timestamps

    options = VadOptions(
        min_silence_duration_ms=MIN_SILENCE_MS, speech_pad_ms=SPEECH_PAD_MS
    )
    block = max(int(block_seconds * sample_rate), ENERGY_FRAME)
    regions: list[Span] = []
    for offset in range(0, samples.shape[0], block):
        part = np.ascontiguousarray(samples[offset : offset + block], dtype=np.float32)
        for found in get_speech_timestamps(part, options, sampling_rate=sample_rate):
            start, end = offset + int(found["start"]), offset + int(found["end"])
            # Speech running over a block's edge comes back as two regions that
            # touch: one region, so the edge is never taken for a pause.
            if regions and start <= regions[-1][1]:
                regions[-1] = (regions[-1][0], max(end, regions[-1][1]))
            else:
                regions.append((start, end))
    return regions


def silences_between(regions: list[Span], n_samples: int) -> list[Span]:
    """The gaps around ``regions`` (sorted, not overlapping) in ``[0, n_samples)``."""
    gaps: list[Span] = []
    position = 0
    for start, end in regions:
        if start > position:
            gaps.append((position, start))
        position = max(position, end)
    if position < n_samples:
        gaps.append((position, n_samples))
    return gaps


def quietest_point(samples: np.ndarray, lo: int, hi: int, want: int) -> int:
    """Where to cut in ``[lo, hi]`` when there is no pause: the centre of the frame
    with the least energy; of frames (nearly) as quiet, the one nearest ``want``.
    A signal with no quiet place at all (a steady tone) is cut at ``want``."""
    frames = (hi - lo) // ENERGY_FRAME
    if frames < 2:
        return min(max(want, lo), hi)
    window = samples[lo : lo + frames * ENERGY_FRAME].astype(np.float64)
    energy = np.square(window).reshape(frames, ENERGY_FRAME).mean(axis=1)
    quiet = np.flatnonzero(energy <= energy.min() * 1.1 + 1e-12)
    centres = lo + quiet * ENERGY_FRAME + ENERGY_FRAME // 2
    return int(centres[np.argmin(np.abs(centres - want))])


def plan_chunks(
    n_samples: int,
    silences: list[Span],
    *,
    target: int,
    maximum: int,
    margin: int = 0,
    quietest: Callable[[int, int, int], int] | None = None,
) -> list[Span]:
    """Cut ``[0, n_samples)`` into consecutive spans of at most ``maximum`` samples.

    Each cut lies in a pause (``silences``: sorted sample spans) when one is within
    reach, the pause whose cut is nearest ``want``, ``target`` samples after the
    previous cut. In a pause the cut goes ``margin`` before speech resumes (the
    middle of a shorter pause): the next chunk then starts with a short lead-in, as
    Whisper's timestamps need; they drift by up to a long leading silence. A pause
    that lasts past ``maximum`` is cut at the length nearest ``want``. Without a
    pause, at ``quietest(lo, hi, want)``, or at ``want`` itself. Every chunk but a
    short clip's only one is at least ``target // 2`` long. The spans cover every
    sample exactly once.
    """
    if target <= 0 or maximum < target:
        raise ValueError("need 0 < target <= maximum")
    minimum = max(1, target // 2)
    starts = [span[0] for span in silences]
    cuts: list[int] = []
    start = 0
    while n_samples - start > maximum:
        # lo <= hi: n_samples - start > maximum >= 2 * minimum.
        lo = start + minimum
        hi = min(start + maximum, n_samples - minimum)
        want = min(max(start + target, lo), hi)
        best: tuple[int, int] | None = None
        # Pauses that may reach into [lo, hi]: those starting before hi.
        for index in range(max(bisect.bisect_right(starts, lo) - 1, 0), len(starts)):
            s, e = silences[index]
            if s > hi:
                break
            a, b = max(s, lo), min(e, hi)
            if a > b or e <= lo:
                continue
            keep = min((e - s) // 2, margin)
            safe_lo, safe_hi = max(s + keep, lo), min(e - keep, hi)
            if safe_lo <= safe_hi:
                resume = e - keep
                # Past the reach, the next chunk starts in silence anyway: then
                # the length decides.
                cut = resume if resume <= hi else min(max(want, safe_lo), safe_hi)
            else:
                # Only the pause's edge is within reach: as far into it as allowed.
                cut = min(max((s + e) // 2, a), b)
            if best is None or abs(cut - want) < best[0]:
                best = (abs(cut - want), cut)
        if best is not None:
            cut = best[1]
        elif quietest is not None:
            cut = quietest(lo, hi, want)
        else:
            cut = want
        cuts.append(cut)
        start = cut
    bounds = [0, *cuts, n_samples]
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def split_long_audio(
    samples: np.ndarray,
    *,
    sample_rate: int = SAMPLE_RATE,
    target_seconds: float,
    max_seconds: float,
) -> list[Span]:
    """Chunks of ``samples`` (sample spans) cut in pauses that VAD finds."""
    silences = silences_between(speech_regions(samples, sample_rate), samples.shape[0])
    return plan_chunks(
        samples.shape[0],
        silences,
        target=round(target_seconds * sample_rate),
        maximum=round(max_seconds * sample_rate),
        margin=round(CUT_MARGIN_SECONDS * sample_rate),
        quietest=lambda lo, hi, want: quietest_point(samples, lo, hi, want),
    )


def absolute_segments(
    segments: list[dict[str, Any]], *, offset: float, duration: float
) -> list[dict[str, Any]]:
    """A chunk's segments (times from the chunk's start) as times in the whole file.

    Times are kept inside the chunk (an engine may place an end a few ms past its
    input), so the segments of consecutive chunks never overlap or go backwards.
    """

    def place(seconds: float) -> float:
        return round(offset + min(max(float(seconds), 0.0), duration), 3)

    out = []
    for segment in segments:
        item = {
            **segment,
            "start": place(segment["start"]),
            "end": place(segment["end"]),
        }
        if segment.get("words"):
            item["words"] = [
                {**word, "start": place(word["start"]), "end": place(word["end"])}
                for word in segment["words"]
            ]
        out.append(item)
    return out


def write_wav(
    target: Path | IO[bytes], samples: np.ndarray, sample_rate: int = SAMPLE_RATE
) -> None:
    """Write float samples as 16-bit mono PCM WAV (what a chunk's audio is kept as)."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    if isinstance(target, Path):
        target.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(target) if isinstance(target, Path) else target, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())


def read_wav(source: Path | IO[bytes]) -> tuple[np.ndarray, int]:
    """A WAV written by :func:`write_wav`, as float32 samples and its sample rate."""
    with wave.open(str(source) if isinstance(source, Path) else source, "rb") as reader:
        if reader.getnchannels() != 1 or reader.getsampwidth() != 2:
            raise ValueError(f"{source} is not 16-bit mono PCM")
        rate = reader.getframerate()
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    return (pcm.astype(np.float32) / 32768.0), rate
