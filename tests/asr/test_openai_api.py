"""The OpenAI-compatible door through the official ``openai`` package, against a live
web process and the session's worker (whisper tiny.en): every response format, with
and without streaming, the models, and the errors as the client's exception classes.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
import requests
from rest_framework.authtoken.models import Token

from tests import audio_files
from tests import processes
from tests.factories import UserFactory
from tests.speech import SENTENCES
from tests.speech import espeak
from tests.speech import espeak_available

pytestmark = [
    pytest.mark.pipeline,
    pytest.mark.skipif(
        not espeak_available(), reason="espeak-ng is installed by `make test`"
    ),
]

SPOKEN = "Hello world. This is a test of subtitles."
FORMATS = ["json", "text", "srt", "verbose_json", "vtt"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return espeak(SPOKEN, tmp_path_factory.mktemp("openai") / "hello.wav")


def _client(base: str, token: str, **options: Any) -> openai.OpenAI:
    # No retries: each error must come back as the class the client maps it to.
    return openai.OpenAI(
        api_key=token, base_url=f"{base}/v1", max_retries=0, timeout=120, **options
    )


@pytest.fixture
def token(transactional_db: Any) -> str:
    return str(Token.objects.create(user=UserFactory()).key)


@pytest.fixture
def client(web: str, worker: Any, token: str) -> openai.OpenAI:
    return _client(web, token)


def _api_job(base: str, token: str, job_id: str) -> dict[str, Any]:
    response = requests.get(
        f"{base}/api/v1/transcriptions/{job_id}",
        headers={"Authorization": f"Token {token}"},
        timeout=10,
    )
    response.raise_for_status()
    return dict(response.json())


def _words(text: str) -> list[str]:
    return [w.strip(".,!?").lower() for w in text.split()]


@pytest.mark.parametrize("response_format", FORMATS)
def test_each_response_format_answers_as_openai_does(
    client: openai.OpenAI, clip: Path, web: str, token: str, response_format: str
) -> None:
    # when the clip is sent as OpenAI's client sends it
    with clip.open("rb") as fh:
        raw = client.audio.transcriptions.with_raw_response.create(
            file=fh,
            model="whisper-1",
            response_format=response_format,  # type: ignore[arg-type]
            timestamp_granularities=["word", "segment"]
            if response_format == "verbose_json"
            else openai.omit,
            language="en",
        )
    result = raw.parse()

    # then the answer is the finished transcript, in the format asked for
    if response_format == "json":
        assert "hello" in _words(result.text)
        assert result.usage.seconds > 1
    elif response_format == "text":
        assert isinstance(result, str) and result.endswith("\n")
        assert "hello" in _words(result)
    elif response_format == "srt":
        assert result.startswith("1\n00:00:0")
        assert "-->" in result
    elif response_format == "vtt":
        assert result.startswith("WEBVTT")
        assert "-->" in result
    else:
        assert result.language == "en"
        assert result.duration > 1
        assert "hello" in _words(result.text)
        first = result.segments[0]
        assert (first.id, first.seek) == (0, round(first.start * 100))
        assert 0 <= first.start < first.end <= result.duration + 0.5
        assert first.avg_logprob < 0 and 0 <= first.no_speech_prob <= 1
        assert first.compression_ratio > 0 and first.temperature == 0.0
        words = result.words
        assert words and _words(words[0].word) == ["hello"]
        assert all(w.start <= w.end for w in words)
        assert " ".join(w.word for w in words).lower().startswith("hello")

    # and the job is an ordinary one of the asr queue, from the openai door
    job = _api_job(web, token, raw.headers["x-job-id"])
    assert (job["source"], job["status"], job["engine"]) == (
        "openai",
        "succeeded",
        "whisper",
    )
    if response_format == "verbose_json":
        assert job["meta"]["options"] == {
            "word_timestamps": True,
            "segment_details": True,
        }
        assert job["segments"][0]["words"]


@pytest.mark.parametrize("response_format", FORMATS)
def test_a_stream_sends_the_text_as_deltas_then_done(
    client: openai.OpenAI, clip: Path, response_format: str
) -> None:
    with clip.open("rb") as fh:
        stream = client.audio.transcriptions.create(
            file=fh,
            model="whisper-tiny.en",
            response_format=response_format,  # type: ignore[arg-type]
            stream=True,
        )
        events = list(stream)

    kinds = [event.type for event in events]
    assert kinds[-1] == "transcript.text.done"
    assert set(kinds[:-1]) == {"transcript.text.delta"}
    done = events[-1].text
    assert "hello" in _words(done)
    assert "".join(event.delta for event in events[:-1]) == done


def test_a_long_clip_streams_deltas_before_it_has_finished(
    client: openai.OpenAI, tmp_path: Path
) -> None:
    # given speech long enough for progress events (ASR_PROGRESS_INTERVAL) mid-job,
    # in sentences that differ: repeated ones compress so well that whisper takes
    # its decode for a loop and falls back to sampling, whose text is random.
    clip = espeak(" ".join(SENTENCES), tmp_path / "long.wav")
    with clip.open("rb") as fh:
        stream = client.audio.transcriptions.create(
            file=fh, model="whisper-1", stream=True
        )
        events = [(time.monotonic(), event) for event in stream]
    deltas = [e for _, e in events if e.type == "transcript.text.delta"]
    # one delta per segment, which together are the text
    assert len(deltas) > 1
    assert "".join(e.delta for e in deltas) == events[-1][1].text
    # and the first came while the worker was still at it
    first_delta, done = events[0][0], events[-1][0]
    print(f"first delta {done - first_delta:.2f} s before done")
    assert done - first_delta > 0.3


def test_models_lists_what_is_served_and_others_are_refused(
    client: openai.OpenAI, clip: Path
) -> None:
    served = [model.id for model in client.models.list()]
    assert served == ["whisper-1", "whisper-tiny.en"]
    assert client.models.retrieve("whisper-1").owned_by == "kikipounamu"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o-transcribe")

    with clip.open("rb") as fh, pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(file=fh, model="gpt-4o-transcribe")
    error = refused.value.body
    assert error["param"] == "model"
    assert error["type"] == "invalid_request_error"
    assert "whisper-1, whisper-tiny.en" in error["message"]


def test_a_bad_token_is_an_authentication_error(
    web: str, clip: Path, transactional_db: Any
) -> None:
    bad = _client(web, "not-a-token")
    with clip.open("rb") as fh, pytest.raises(openai.AuthenticationError) as refused:
        bad.audio.transcriptions.create(file=fh, model="whisper-1")
    assert refused.value.body["code"] == "invalid_api_key"
    assert set(refused.value.body) >= {"message", "type", "param", "code"}
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_a_stranger_waiting_to_send_a_large_body_is_refused_before_sending_it(
    web: str, transactional_db: Any
) -> None:
    # curl asks "Expect: 100-continue" before a large upload: the answer comes first
    parts = urlsplit(web)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.putrequest("POST", "/v1/audio/transcriptions")
    for name, value in {
        "Authorization": "Bearer not-a-token",
        "Content-Type": "multipart/form-data; boundary=x",
        "Content-Length": str(50_000_000),
        "Expect": "100-continue",
    }.items():
        conn.putheader(name, value)
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 401
    assert json.loads(response.read())["error"]["code"] == "invalid_api_key"
    conn.close()


def test_a_file_that_is_not_audio_is_refused_with_415(
    client: openai.OpenAI, tmp_path: Path
) -> None:
    notes = audio_files.text_file(tmp_path / "notes.mp3")
    with notes.open("rb") as fh, pytest.raises(openai.APIStatusError) as refused:
        client.audio.transcriptions.create(file=fh, model="whisper-1")
    assert refused.value.status_code == 415
    assert refused.value.body["code"] == "unsupported_format"
    assert refused.value.body["param"] == "file"


def test_bad_parameters_are_bad_requests_naming_the_parameter(
    client: openai.OpenAI, clip: Path
) -> None:
    for params, param in [
        ({"response_format": "xml"}, "response_format"),
        ({"temperature": 3}, "temperature"),
        ({"language": "klingon"}, "language"),
        ({"timestamp_granularities": ["syllable"]}, "timestamp_granularities[]"),
    ]:
        with clip.open("rb") as fh, pytest.raises(openai.BadRequestError) as refused:
            client.audio.transcriptions.create(file=fh, model="whisper-1", **params)
        assert refused.value.body["param"] == param, params


def test_a_job_that_fails_is_an_error_naming_it(
    client: openai.OpenAI, web: str, token: str, tmp_path: Path
) -> None:
    # given audio whose headers pass at upload but that the worker cannot decode
    cut = audio_files.truncated(tmp_path / "cut.wav", audio_files.FORMATS["wav"])
    with cut.open("rb") as fh, pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(file=fh, model="whisper-1")
    error = refused.value.body
    assert error["code"] == "corrupt_audio"
    assert error["job_id"] in error["message"]
    # the client must not send it again: the job exists, failed
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert _api_job(web, token, error["job_id"])["status"] == "failed"


def test_a_language_the_workers_do_not_serve_is_refused_at_upload(
    client: openai.OpenAI, clip: Path
) -> None:
    # tiny.en transcribes English only, as the session worker's heartbeat says
    with clip.open("rb") as fh, pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(file=fh, model="whisper-1", language="de")
    assert refused.value.body["code"] == "unsupported_language"
    assert refused.value.body["param"] == "language"
    assert "job_id" not in refused.value.body


# Limits: a web process of their own --------------------------------------------------

MAX_UPLOAD_BYTES = 300_000


@pytest.fixture(scope="module")
def full_web(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    """A web process whose queue is always full (no depth is under 0), with small
    uploads and two submissions a minute."""
    proc, base = processes.start_web(
        ASR_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
        ASR_MAX_QUEUE_DEPTH="0",
        ASR_BUSY_RETRY_AFTER="7",
        API_THROTTLE_SUBMIT="2/min",
    )
    yield base
    proc.stop()


def test_busy_too_large_and_too_many_are_the_clients_error_classes(
    full_web: str, token: str, clip: Path, tmp_path: Path
) -> None:
    client = _client(full_web, token)
    # a body over the upload limit: refused before it is read
    big = tmp_path / "big.wav"
    big.write_bytes(clip.read_bytes() + b"\0" * (MAX_UPLOAD_BYTES + 100_000))
    with big.open("rb") as fh, pytest.raises(openai.APIStatusError) as refused:
        client.audio.transcriptions.create(file=fh, model="whisper-1")
    assert refused.value.status_code == 413
    assert refused.value.body["code"] == "too_large"

    # a full queue: 503 with Retry-After, nothing stored
    for _ in range(2):
        with clip.open("rb") as fh, pytest.raises(openai.InternalServerError) as busy:
            client.audio.transcriptions.create(file=fh, model="whisper-1")
        assert busy.value.status_code == 503
        assert busy.value.body["code"] == "busy"
        assert busy.value.response.headers["retry-after"] == "7"

    # past the submission rate: 429 with Retry-After
    with clip.open("rb") as fh, pytest.raises(openai.RateLimitError) as throttled:
        client.audio.transcriptions.create(file=fh, model="whisper-1")
    assert int(throttled.value.response.headers["retry-after"]) >= 1
    assert throttled.value.body["code"] == "rate_limit_exceeded"


@pytest.fixture(scope="module")
def workerless_web(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    """A web process whose queue no worker takes from, that waits one second."""
    proc, base = processes.start_web(
        KIKI_TEST_NAMESPACE=f"openai-{uuid.uuid4().hex[:6]}",
        OPENAI_WAIT_SECONDS="1",
        OPENAI_RECHECK_SECONDS="0.2",
    )
    yield base
    proc.stop()


def test_past_the_wait_the_answer_names_the_job_and_it_goes_on(
    workerless_web: str, token: str, clip: Path
) -> None:
    client = _client(workerless_web, token)
    # when the job has not finished within OPENAI_WAIT_SECONDS
    with clip.open("rb") as fh, pytest.raises(openai.InternalServerError) as pending:
        client.audio.transcriptions.create(file=fh, model="whisper-1")
    # then a 504 that the client must not retry (that would send the audio again)
    assert pending.value.status_code == 504
    assert pending.value.response.headers["x-should-retry"] == "false"
    errors = [pending.value.body]

    # and a stream, begun already, ends with the same error as its last event
    with clip.open("rb") as fh, pytest.raises(openai.APIError) as in_stream:
        for _ in client.audio.transcriptions.create(
            file=fh, model="whisper-1", stream=True
        ):
            pass
    errors.append(in_stream.value.body)

    for error in errors:
        assert error["code"] == "job_pending"
        assert error["job_id"] in error["message"]
        assert error["job_url"].endswith(f"/api/v1/transcriptions/{error['job_id']}")
        # the job goes on, where the REST API shows it
        job = _api_job(workerless_web, token, error["job_id"])
        assert (job["status"], job["source"]) == ("queued", "openai")
