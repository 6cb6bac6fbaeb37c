"""Cutting long audio at pauses: cut points, coverage, VAD, times, chunk files."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest

from asr import chunking
from tests.audio_files import sine
from tests.audio_files import speech
from tests.speech import SENTENCES
from tests.speech import espeak_available

SR = 16_000


def assert_covers(spans: list[tuple[int, int]], n: int) -> None:
    """Consecutive, no gap, no overlap, every sample from 0 to n exactly once."""
    assert spans[0][0] == 0
    assert spans[-1][1] == n
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end == start
    assert all(start < end for start, end in spans)


def test_cuts_fall_in_the_pause_nearest_the_target_length() -> None:
    # given 100 s with a 0.5 s pause every 7 s
    n = 100 * SR
    silences = [(t * SR, t * SR + SR // 2) for t in range(7, 100, 7)]

    # when it is planned in chunks of about 20 s, at most 30 s
    spans = chunking.plan_chunks(
        n, silences, target=20 * SR, maximum=30 * SR, margin=SR // 2
    )

    # then every cut is in the middle of a pause, near 20 s after the last one
    assert_covers(spans, n)
    for _, cut in spans[:-1]:
        assert any(s <= cut <= e for s, e in silences), cut / SR
    lengths = [(end - start) / SR for start, end in spans]
    assert lengths[:-1] == pytest.approx([21.0] * (len(spans) - 1), abs=0.3)
    assert max(lengths) <= 30


def test_without_any_pause_it_cuts_at_the_target_length() -> None:
    n = 100 * SR
    spans = chunking.plan_chunks(n, [], target=20 * SR, maximum=30 * SR)
    assert spans == [(i * 20 * SR, (i + 1) * 20 * SR) for i in range(5)]


def test_without_a_pause_the_quietest_point_is_used() -> None:
    # given loud noise with one quieter stretch at 26 s (no pause VAD would report)
    rng = np.random.default_rng(0)
    samples = (0.5 * rng.standard_normal(60 * SR)).astype(np.float32)
    samples[26 * SR : 26 * SR + 2048] *= 0.05

    spans = chunking.plan_chunks(
        len(samples),
        [],
        target=20 * SR,
        maximum=30 * SR,
        quietest=lambda lo, hi, want: chunking.quietest_point(samples, lo, hi, want),
    )

    assert_covers(spans, len(samples))
    assert 26 * SR <= spans[0][1] <= 26 * SR + 2048


def test_a_steady_tone_with_no_quiet_place_is_cut_at_the_target() -> None:
    samples = sine(60)
    cut = chunking.quietest_point(samples, 10 * SR, 30 * SR, 20 * SR)
    assert abs(cut - 20 * SR) <= chunking.ENERGY_FRAME


def test_in_a_pause_the_cut_is_just_before_speech_resumes() -> None:
    # given a 3.5 s pause from 17 s: the next chunk starts 0.5 s before speech
    spans = chunking.plan_chunks(
        80 * SR,
        [(17 * SR, 20 * SR + SR // 2)],
        target=20 * SR,
        maximum=30 * SR,
        margin=SR // 2,
    )
    assert spans[0] == (0, 20 * SR)
    # a pause lasting past the maximum length is cut at the target length
    spans = chunking.plan_chunks(
        80 * SR, [(12 * SR, 52 * SR)], target=20 * SR, maximum=30 * SR, margin=SR
    )
    assert spans[0] == (0, 20 * SR)
    # and a pause whose safe middle is out of reach is cut as deep inside as allowed
    spans = chunking.plan_chunks(
        80 * SR,
        [(29 * SR + SR // 2, 40 * SR)],
        target=20 * SR,
        maximum=30 * SR,
        margin=SR,
    )
    assert spans[0] == (0, 30 * SR)


def test_a_clip_no_longer_than_the_maximum_stays_whole() -> None:
    assert chunking.plan_chunks(30 * SR, [], target=20 * SR, maximum=30 * SR) == [
        (0, 30 * SR)
    ]


def test_every_plan_covers_every_sample_once_within_the_limits() -> None:
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randrange(1, 400 * SR)
        target = rng.randrange(SR, 60 * SR)
        maximum = target + rng.randrange(0, 60 * SR)
        silences = []
        position = 0
        while True:
            position += rng.randrange(1, 20 * SR)
            length = rng.randrange(1, 3 * SR)
            if position + length >= n:
                break
            silences.append((position, position + length))
            position += length

        spans = chunking.plan_chunks(
            n, silences, target=target, maximum=maximum, margin=rng.randrange(SR)
        )

        assert_covers(spans, n)
        assert all(end - start <= maximum for start, end in spans)
        if len(spans) > 1:
            assert all(end - start >= target // 2 for start, end in spans)


def test_silences_are_the_gaps_around_speech() -> None:
    assert chunking.silences_between([(10, 20), (20, 30), (40, 50)], 60) == [
        (0, 10),
        (30, 40),
        (50, 60),
    ]
    assert chunking.silences_between([], 5) == [(0, 5)]
    assert chunking.silences_between([(0, 5)], 5) == []


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng: `make test`")
def test_vad_finds_the_pauses_between_spoken_sentences(tmp_path: Path) -> None:
    # given six sentences with 2 s of silence after each (about 40 s)
    parts, pauses, position = [], [], 0
    for text in SENTENCES[:6]:
        voice = speech(text, tmp_path)
        parts += [voice, np.zeros(2 * SR, np.float32)]
        position += len(voice)
        pauses.append((position, position + 2 * SR))
        position += 2 * SR
    samples = np.concatenate(parts)

    # when it is split in chunks of about 10 s, at most 15 s, with VAD in 7 s blocks
    regions = chunking.speech_regions(samples, block_seconds=7)
    spans = chunking.plan_chunks(
        len(samples),
        chunking.silences_between(regions, len(samples)),
        target=10 * SR,
        maximum=15 * SR,
        margin=SR // 2,
    )

    # then every cut lies in one of the real pauses, never in a word
    assert_covers(spans, len(samples))
    assert len(spans) >= 3
    for _, cut in spans[:-1]:
        assert any(s <= cut <= e for s, e in pauses), cut / SR
    # and speech across a block edge is not taken for a pause: every silence VAD
    # reports overlaps a real pause (or the start)
    for s, e in chunking.silences_between(regions, len(samples)):
        assert s == 0 or any(s < pe and ps < e for ps, pe in pauses), (s / SR, e / SR)


def test_segment_times_become_times_in_the_whole_file() -> None:
    segments = [
        {"start": 0.0, "end": 4.2, "text": "a"},
        {
            "start": 4.2,
            "end": 20.05,  # an engine may end a few ms past its input
            "text": "b",
            "words": [{"start": 4.2, "end": 20.05, "text": "b", "probability": 0.9}],
        },
    ]
    placed = chunking.absolute_segments(segments, offset=100.0, duration=20.0)
    assert placed == [
        {"start": 100.0, "end": 104.2, "text": "a"},
        {
            "start": 104.2,
            "end": 120.0,
            "text": "b",
            "words": [{"start": 104.2, "end": 120.0, "text": "b", "probability": 0.9}],
        },
    ]


def test_chunk_audio_round_trips_as_16_bit_wav(tmp_path: Path) -> None:
    samples = sine(1.5)
    chunking.write_wav(tmp_path / "a" / "c.wav", samples)
    back, rate = chunking.read_wav(tmp_path / "a" / "c.wav")
    assert rate == SR
    assert back.dtype == np.float32
    assert len(back) == len(samples)
    assert np.abs(back - samples).max() < 1 / 16_000
