"""Whisper on live-sized clips: the full 30 s window against one fitted to the clip.

    .venv/bin/python bench/whisper_window.py            # about 2 min on two cores
    .venv/bin/python bench/whisper_window.py --paddings 0,1,3,6,10 --threads 2

A live utterance is one sentence; faster-whisper encodes it in Whisper's 30 s window
and the live engine options (LIVE_FITTED_WINDOW) in one of its length plus
asr/engines/whisper_window.py's padding. The clips are espeak-ng saying the twelve
sentences of tests/speech.py at each of ``--rates`` words per minute, with 0.3 s of
silence before and after (what the live endpointer leaves round an utterance). One
engine (tiny.en, ``--threads``, 1 as a live worker runs it) transcribes every clip
each way as a live final does (beam 5, no VAD filter) and, with ``--beam 1``, as a
partial does. The ways take turns clip by clip, so the machine's drift falls on all
alike.

Printed per way: WER (tests/speech.py's normalisation, pooled), milliseconds a call
(median, p90), and how many fitted decodes were handed back to the full window
(faster-whisper would have decoded them again at a higher temperature). The
``--paddings`` sweep shows why the padding is what it is: too little and Whisper,
trained on padded 30 s windows, hallucinates past the speech.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from asr.engines import load_engine  # noqa: E402
from asr.engines import whisper_window  # noqa: E402
from bench import live_clips  # noqa: E402
from tests.speech import SENTENCES  # noqa: E402
from tests.speech import word_error_rate  # noqa: E402

RATE = 16_000
EDGE_SECONDS = 0.3


def clip(text: str, wpm: int) -> np.ndarray:
    """The sentence as bench/live.py's streams say it, between edges of silence."""
    speech = live_clips._said(text, wpm).astype(np.float32) / 32768
    edge = np.zeros(int(EDGE_SECONDS * RATE), np.float32)
    return np.concatenate([edge, speech, edge])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="140,155,170")
    parser.add_argument("--paddings", default="1,3,6,10")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--beam", type=int, default=5)
    opts = parser.parse_args()

    engine: Any = load_engine("whisper", threads=opts.threads)
    clips = [
        (text, clip(text, int(wpm)))
        for wpm in opts.rates.split(",")
        for text in SENTENCES
    ]
    paddings = sorted(
        {float(p) for p in opts.paddings.split(",")} | {whisper_window.PADDING_SECONDS}
    )
    ways: dict[str, dict[str, Any]] = {"full 30 s window": {"padding": None}}
    for padding in paddings:
        default = " (the engine's)" if padding == whisper_window.PADDING_SECONDS else ""
        ways[f"fitted, {padding:g} s padding{default}"] = {"padding": padding}
    for way in ways.values():
        way.update(texts=[], ms=[], handed_back=0)

    default_padding = whisper_window.PADDING_SECONDS
    original = whisper_window.transcribe

    def counting(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if result is None:
            counting.handed_back += 1  # type: ignore[attr-defined]
        return result

    counting.handed_back = 0  # type: ignore[attr-defined]
    whisper_window.transcribe = counting  # type: ignore[assignment]
    engine.transcribe(clips[0][1], RATE, "en", vad_filter=False)  # warm up
    try:
        for _, audio in clips:
            for way in ways.values():
                padding = way["padding"]
                whisper_window.PADDING_SECONDS = padding or default_padding
                before = counting.handed_back  # type: ignore[attr-defined]
                started = time.perf_counter()
                result = engine.transcribe(
                    audio,
                    RATE,
                    "en",
                    vad_filter=False,
                    beam_size=opts.beam,
                    fitted_window=padding is not None,
                )
                way["ms"].append((time.perf_counter() - started) * 1000)
                way["texts"].append(result.text)
                way["handed_back"] += counting.handed_back - before  # type: ignore[attr-defined]
    finally:
        whisper_window.PADDING_SECONDS = default_padding
        whisper_window.transcribe = original  # type: ignore[assignment]

    refs = [text for text, _ in clips]
    seconds = statistics.mean(len(a) / RATE for _, a in clips)
    print(
        f"{len(clips)} clips of {seconds:.1f} s on average (rates {opts.rates} wpm),"
        f" tiny.en int8, {opts.threads} thread(s), beam {opts.beam}, no VAD filter"
    )
    print(f"{'way':36} {'WER':>7} {'ms/call p50':>12} {'p90':>7} {'handed back':>12}")
    for name, way in ways.items():
        ms = sorted(way["ms"])
        print(
            f"{name:36} {word_error_rate(refs, way['texts']):7.3f}"
            f" {statistics.median(ms):12.0f} {ms[int(0.9 * (len(ms) - 1))]:7.0f}"
            f" {way['handed_back']:12d}"
        )


if __name__ == "__main__":
    main()
