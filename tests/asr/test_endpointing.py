"""Cutting a live stream into utterances (asr.realtime.endpointing): on espeak-ng
speech, in frames of any size, at any rate the door takes."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from asr.realtime.endpointing import Begin
from asr.realtime.endpointing import EndpointConfig
from asr.realtime.endpointing import Endpointer
from asr.realtime.endpointing import Resampler
from asr.realtime.endpointing import Utterance
from tests.speech import espeak_available
from tests.speech import speech_stream

pytestmark = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng is installed by `make test`"
)

RATE = 16_000
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "Open the window and let some fresh air into the room.",
]


def cut(samples: np.ndarray, frame: int, config: EndpointConfig | None = None):
    endpointer = Endpointer(config)
    events = []
    for offset in range(0, samples.size, frame):
        events += endpointer.feed(samples[offset : offset + frame])
    last = endpointer.finish()
    return events, last


@pytest.mark.parametrize("frame", [160, 1600, 4096, 16_000])
def test_each_sentence_is_one_utterance_around_its_speech(
    tmp_path: Path, frame: int
) -> None:
    pcm, spans = speech_stream(SENTENCES, tmp_path, gap=1.2)
    events, last = cut(np.frombuffer(pcm, "<i2"), frame)
    utterances = [e for e in events if isinstance(e, Utterance)]
    begins = [e for e in events if isinstance(e, Begin)]
    assert last is None
    assert len(utterances) == len(begins) == len(SENTENCES)
    for begin, utterance, (start, end, _) in zip(
        begins, utterances, spans, strict=True
    ):
        assert begin.start == utterance.start
        assert utterance.reason == "endpoint"
        # All the speech inside, and not much else.
        assert utterance.start / RATE <= start <= utterance.start / RATE + 0.6
        assert utterance.end / RATE - 0.5 <= end <= utterance.end / RATE


def test_long_speech_is_cut_at_the_maximum_length_without_gaps_or_overlap(
    tmp_path: Path,
) -> None:
    pcm, _ = speech_stream(SENTENCES * 2, tmp_path, gap=0.1)
    config = EndpointConfig(max_utterance_ms=4000)
    events, last = cut(np.frombuffer(pcm, "<i2"), 1600, config)
    utterances = [e for e in events if isinstance(e, Utterance)]
    if last is not None:
        utterances.append(last)
    assert any(u.reason == "max_length" for u in utterances)
    for u in utterances:
        assert u.end - u.start <= 4000 * 16 + 320
    for before, after in itertools.pairwise(utterances):
        assert after.start >= before.end
        if before.reason == "max_length":
            assert after.start == before.end


def test_silence_and_quiet_noise_are_no_utterance() -> None:
    rng = np.random.default_rng(1)
    quiet = (rng.standard_normal(RATE * 5) * 30).astype(np.int16)
    events, last = cut(np.concatenate([np.zeros(RATE * 5, np.int16), quiet]), 1600)
    assert events == [] and last is None


def test_a_stream_that_stops_mid_sentence_ends_its_utterance(tmp_path: Path) -> None:
    pcm, spans = speech_stream(SENTENCES[:1], tmp_path, tail=0)
    samples = np.frombuffer(pcm, "<i2")
    middle = int((spans[0][0] + spans[0][1]) / 2 * RATE)
    events, last = cut(samples[:middle], 1600)
    assert [type(e) for e in events] == [Begin]
    assert last is not None and last.reason == "stop" and last.end == middle


@pytest.mark.parametrize("rate", [8000, 22_050, 44_100, 48_000])
def test_the_resampler_keeps_the_duration_across_frames(rate: int) -> None:
    seconds = 3
    t = np.arange(rate * seconds) / rate
    samples = (np.sin(2 * np.pi * 440 * t) * 10_000).astype(np.int16)
    resampler = Resampler(rate)
    out = [
        resampler.feed(samples[i : i + rate // 10])
        for i in range(0, samples.size, rate // 10)
    ]
    out.append(resampler.flush())
    total = sum(o.size for o in out)
    assert abs(total - RATE * seconds) <= 2
    # Still the same tone (no clicks at frame edges): one peak, at 440 Hz.
    joined = np.concatenate(out).astype(np.float32)
    spectrum = np.abs(np.fft.rfft(joined[RATE // 2 : RATE // 2 + RATE]))
    assert np.argmax(spectrum) == 440
    assert np.sort(spectrum)[-3] < spectrum.max() / 100


def test_a_rate_the_door_does_not_take_is_refused() -> None:
    with pytest.raises(ValueError):
        Resampler(11_025)
