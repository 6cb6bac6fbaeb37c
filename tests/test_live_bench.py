"""bench/live_clips.py makes the same clips for the same seed, with each sentence's
span where its sound is; bench/whisperlive.py scores WhisperLive's segments against
them (no WhisperLive here: its server runs only in the benchmark)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import whisperlive as wl
from bench.live_clips import SAMPLE_RATE
from bench.live_clips import Clip
from bench.live_clips import make_clips
from bench.live_clips import start_offset
from tests.speech import SENTENCES
from tests.speech import espeak_available

needs_espeak = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng is installed by `make test`"
)


@needs_espeak
def test_the_same_seed_makes_the_same_clips_and_a_larger_set_begins_with_them():
    # when
    two, three = make_clips(2, seed=3, seconds=15), make_clips(3, seed=3, seconds=15)

    # then
    assert three[:2] == two
    assert make_clips(2, seed=4, seconds=15) != two
    assert [start_offset(i, 3) for i in range(3)] == [0.0, 1.0, 2.0]


@needs_espeak
def test_a_clip_holds_sentences_where_its_spans_say_with_silence_between():
    # given
    clip = make_clips(1, seed=0, seconds=20)[0]
    samples = np.frombuffer(clip.pcm16, dtype="<i2")

    # then
    assert 15 <= clip.seconds <= 20
    assert all(text in SENTENCES for _, _, text in clip.utterances)
    silent_from = 0
    for start, end, _ in clip.utterances:
        first, last = round(start * SAMPLE_RATE), round(end * SAMPLE_RATE) - 1
        assert not samples[silent_from:first].any()  # silence before it
        assert samples[first] != 0 and samples[last] != 0  # sound at both ends
        silent_from = last + 1
    gaps = [b[0] - a[1] for a, b in zip(clip.utterances, clip.utterances[1:])]
    assert all(1.0 <= gap <= 1.5 + 1e-3 for gap in gaps)


def stream_of(utterances, segments, *, frame_samples=1600) -> wl.Stream:
    seconds = utterances[-1][1] + 1
    clip = Clip(bytes(2 * round(seconds * SAMPLE_RATE)), utterances)
    stream = wl.Stream(clip, frame_samples)
    # A frame leaves when its audio has been heard, from t = 100.
    frames = math.ceil(seconds * SAMPLE_RATE / frame_samples)
    stream.sent_at = [
        100 + (k + 1) * frame_samples / SAMPLE_RATE for k in range(frames)
    ]
    for start, end, text, at in segments:
        stream.completed[(f"{start:.3f}", f"{end:.3f}")] = wl.Segment(
            start, end, text, at
        )
    return stream


def test_a_sentence_is_final_when_the_last_segment_covering_it_arrives():
    # given: the second sentence split in two segments, the third never completed
    stream = stream_of(
        [(0.5, 3.0, "one two three"), (4.5, 7.0, "four five six"), (8.5, 10.0, "x")],
        [
            (0.3, 3.2, " one two three", 105.0),
            (4.4, 5.5, " four five", 109.0),
            (5.5, 7.1, " six", 110.0),
        ],
    )

    # when
    figures = wl.score([stream])

    # then: from the frame holding each sentence's last sound (100.0 + 3.0, + 7.0)
    assert figures["utterances"] == 3
    assert figures["finals_missing"] == 1
    assert figures["final_mid_p50_s"] == pytest.approx(2.0)
    assert figures["final_mid_p99_s"] == pytest.approx(3.0)
    assert figures["final_last_p50_s"] == math.inf
    assert figures["final_p99_s"] == math.inf
    assert figures["wer"] == pytest.approx(1 / 7)


def test_a_segment_straddling_two_sentences_finalises_both_and_costs_no_wer():
    # given
    stream = stream_of(
        [(0.5, 3.0, "one two"), (4.0, 6.0, "three four")],
        [(0.4, 6.1, " one two three four", 108.0)],
    )

    # when
    finalising = [f for f, _ in wl.attribute(stream)]
    figures = wl.score([stream])

    # then
    assert all(len(f) == 1 for f in finalising)
    assert figures["finals_missing"] == 0
    assert figures["wer"] == 0.0
    assert figures["wer_per_utterance"] == 1.0  # its words all go to the first
