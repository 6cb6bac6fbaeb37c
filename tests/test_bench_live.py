"""bench/live.py scores our live streams by bench/whisperlive.py's rule and counts
what was lost: checked here on records made by hand (the benchmark itself runs
servers; it is a script, not a test)."""

from __future__ import annotations

import math

import pytest

from bench import live
from bench.live_clips import SAMPLE_RATE
from bench.live_clips import Clip

FRAME_MS = 100
FRAME_SECONDS = FRAME_MS / 1000


def clip_of(utterances: list[tuple[float, float, str]], seconds: float) -> Clip:
    return Clip(bytes(2 * round(seconds * SAMPLE_RATE)), utterances)


def record_of(
    clip: Clip, messages: list[tuple[float, dict]], *, frames: int | None = None
) -> dict:
    """A stream's record as live_stream returns it: paced from t0 = 100, a frame
    leaving once its audio has been heard, and the server's messages."""
    count = math.ceil(clip.seconds / FRAME_SECONDS) if frames is None else frames
    return {
        "t0": 100.0,
        "opened_at": 99.8,
        "sent_at": [100.0 + (k + 1) * FRAME_SECONDS for k in range(count)],
        "messages": [(99.9, {"type": "ready", "session": "s"}), *messages],
        "ready_at": 99.9,
        "close_code": 1000,
        "close_reason": "",
        "error": "",
    }


def final(index: int, start: float, end: float, text: str) -> dict:
    return {"type": "final", "index": index, "start": start, "end": end, "text": text}


def partial(index: int, text: str) -> dict:
    return {"type": "partial", "utterance": index, "text": text}


END = (100.0, {"type": "end"})


def test_finals_are_scored_from_the_frame_holding_the_last_sound_and_a_missing_one_is_lost():
    # given: two sentences; the first final 0.9 s after its last sound, none for the
    # second although its audio was all sent
    clip = clip_of([(0.5, 2.0, "one two"), (3.0, 4.0, "three")], seconds=5.0)
    record = record_of(
        clip,
        [
            (102.4, {"type": "speech_stopped", "utterance": 0, "end": 2.2}),
            (102.9, final(0, 0.2, 2.2, "one two")),
            (106.0, {"type": "end"}),
        ],
    )

    # when
    figures = live.score_streams([record], [clip], FRAME_MS, 1.0)

    # then
    assert figures["finals_lost"] == 1
    assert figures["sentences_said"] == 2
    assert figures["final_mid_p50_s"] == pytest.approx(0.9)
    assert figures["final_last_p50_s"] == math.inf
    assert figures["endpoint_p50_s"] == pytest.approx(0.4)
    assert figures["after_endpoint_p50_s"] == pytest.approx(0.5)
    assert figures["dropped"] == 0
    assert figures["stream_seconds"] == pytest.approx(5.0)


def test_partials_count_as_gaps_while_speaking_and_only_new_text_as_a_visible_change():
    # given: a sentence said from 100.5 to 103.0 (sent times), partials at 101.0,
    # 101.5 (same text) and 102.5
    clip = clip_of([(0.5, 3.0, "a b c")], seconds=4.0)
    record = record_of(
        clip,
        [
            (101.0, partial(0, "a")),
            (101.5, partial(0, "a")),
            (102.5, partial(0, "a b")),
            (103.5, final(0, 0.3, 3.2, "a b c")),
            END,
        ],
    )

    # when
    stream = live.as_stream(record, clip, FRAME_MS)
    figures = live.score_streams([record], [clip], FRAME_MS, 1.0)

    # then
    assert stream.changes == [101.0, 102.5, 103.5]
    assert figures["partial_message_gap_p95_s"] == pytest.approx(0.975)
    assert figures["partial_gap_p95_s"] == pytest.approx(1.5)
    assert figures["finals_lost"] == 0
    assert figures["wer"] == 0.0


def test_a_stream_that_closed_other_than_1000_after_end_is_dropped():
    # given
    clip = clip_of([(0.5, 1.0, "x")], seconds=2.0)
    fine = record_of(clip, [(101.5, final(0, 0.3, 1.2, "x")), END])
    no_end = record_of(clip, [(101.5, final(0, 0.3, 1.2, "x"))])
    timed_out = {**fine, "close_code": 1011, "close_reason": "keepalive ping timeout"}
    refused = {
        **record_of(clip, [], frames=0),
        "messages": [],
        "ready_at": None,
        "error": "InvalidStatus: server rejected WebSocket connection: HTTP 403",
    }

    # when
    reasons = [live.drop_reason(r) for r in (fine, no_end, timed_out, refused)]
    figures = live.score_streams([fine, no_end, timed_out, refused], [clip], 100, 1.0)

    # then
    assert reasons == [
        None,
        "closed 1000 without end",
        "close 1011 keepalive ping timeout",
        "InvalidStatus",
    ]
    assert figures["dropped"] == 3
    # The refused stream said nothing: no sentence of it is counted lost.
    assert figures["sentences_said"] == 3


def test_capacity_doubles_while_the_p99_holds_and_halves_when_the_start_fails():
    def run_with_limit(limit: int):
        calls = []

        def run(n: int) -> dict:
            calls.append(n)
            return {"final_p99_s": 1.0 if n <= limit else 3.0}

        return run, calls

    # given / when: holds up to 5 streams, searched from 4
    run, calls = run_with_limit(5)
    held, runs = live.search_capacity(run, {}, 4, 16)
    assert sorted(runs) == [4, 8]

    # then
    assert held == 4 and calls == [4, 8]

    # given / when: holds 1, searched from 4, the figure at 4 already known
    run, calls = run_with_limit(1)
    held, _ = live.search_capacity(run, {4: {"final_p99_s": 9.0}}, 4, 16)

    # then
    assert held == 1 and calls == [2, 1]

    # and a dropped stream fails the run whatever its p99
    assert not live.holds({"final_p99_s": 0.5, "dropped": 1})
