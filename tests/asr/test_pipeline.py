"""The whole path with real processes: HTTP in, Redis, a Celery worker, text out."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.speech import SENTENCES
from tests.speech import espeak
from tests.speech import espeak_available
from tests.speech import word_error_rate

pytestmark = [
    pytest.mark.pipeline,
    pytest.mark.skipif(
        not espeak_available(), reason="espeak-ng is installed by `make test`"
    ),
]

# Measured with whisper tiny.en (int8, beam 5) on espeak-ng's en-us voice at 150 wpm:
# 0.092 over these 12 sentences. The bound leaves room for CPU-dependent decoding.
WER_BOUND = 0.15


def test_spoken_sentences_come_back_as_text_through_the_api(
    live_api, worker, tmp_path: Path
) -> None:
    # given twelve spoken sentences
    clips = [espeak(text, tmp_path / f"s{i}.wav") for i, text in enumerate(SENTENCES)]

    # when each is submitted through the REST API
    submitted = []
    for clip in clips:
        response = live_api.submit(clip)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["status"] == "queued"
        assert body["links"]["self"].endswith(body["id"])
        submitted.append(body["id"])

    # then every job succeeds with timed segments, and the words are right
    jobs = [live_api.wait(job_id) for job_id in submitted]
    for job in jobs:
        assert job["status"] == "succeeded", job
        assert job["engine"] == "whisper"
        assert job["attempts"] == 1
        assert job["duration"] > 1
        assert (
            job["segments"] and job["segments"][0]["end"] > job["segments"][0]["start"]
        )
        assert 0 < job["real_time_factor"] < 5
        assert job["worker_hostname"]
    wer = word_error_rate(SENTENCES, [job["text"] for job in jobs])
    print(f"WER over {len(SENTENCES)} sentences: {wer:.3f}")
    assert wer < WER_BOUND


def test_transcript_downloads_in_every_format(live_api, worker, tmp_path: Path) -> None:
    clip = espeak("Hello world. This is a test of subtitles.", tmp_path / "hello.wav")
    job = live_api.wait(live_api.submit(clip).json()["id"])
    assert job["status"] == "succeeded", job

    def download(fmt: str) -> str:
        response = live_api.session.get(job["links"][fmt], timeout=10)
        assert response.status_code == 200, response.text
        return response.text

    assert download("txt").strip() == job["text"]
    assert download("srt").startswith("1\n00:00:0")
    assert download("vtt").startswith("WEBVTT")
    assert '"segments"' in download("json")


def test_a_language_no_worker_serves_is_refused_at_the_door(
    live_api, worker, tmp_path: Path
) -> None:
    # The session's worker runs tiny.en and has said so.
    worker.wait_for_log("engine reported")
    clip = espeak("Hello world.", tmp_path / "hello.wav")
    response = live_api.submit(clip, language="de")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "unsupported_language"
    assert "transcribes en only" in error["message"]
    assert live_api.submit(clip, language="en").status_code == 202
