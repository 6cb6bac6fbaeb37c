"""Every door that parses JSON from outside, fed the same hostile bodies: the REST
API answers 415 where it takes no JSON and 400 where it does; a WebSocket closes with RFC 6455's 1007 and a
reason (1003 for a binary frame), and the server carries on. The live sockets (ours
at /ws/live/, FunASR's at the root) are fed them as their first message, and as a
message mid-stream. (The Telegram webhook: tests/bots/test_webhook.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import ParseError
from rest_framework.request import Request
from rest_framework.test import APIClient
from rest_framework.test import APIRequestFactory
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from asr.models import Transcription
from kikipounamu.parsers import JSONParser
from tests.asr.test_api import wav_bytes
from tests.conftest import LiveApi
from tests.factories import UserFactory
from tests.hostile_json import HOSTILE_JSON
from tests.live_client import closed_with as live_closed_with
from tests.live_client import ws_url

CASES = pytest.mark.parametrize("body", HOSTILE_JSON.values(), ids=HOSTILE_JSON.keys())


@CASES
def test_the_rest_api_refuses_hostile_json_with_a_client_error(
    api_client: APIClient, body: bytes
) -> None:
    # Submitting takes multipart only: a JSON body is told so.
    response = api_client.post(
        "/api/v1/transcriptions", data=body, content_type="application/json"
    )
    assert response.status_code == 415, response.content
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert not Transcription.objects.exists()


@CASES
def test_the_api_json_parser_answers_400_in_the_error_shape(body: bytes) -> None:
    # What any view that takes JSON parses with (DEFAULT_PARSER_CLASSES).
    request = APIRequestFactory().post("/", data=body, content_type="application/json")
    with pytest.raises(ParseError) as refused:
        Request(request, parsers=[JSONParser()]).data
    assert refused.value.status_code == 400
    assert str(refused.value.detail)


@pytest.fixture
def job_socket(live_api: LiveApi, tmp_path: Path) -> str:
    """A queued job's WebSocket URL (with its signed token), on the live web."""
    clip = tmp_path / "a.wav"
    clip.write_bytes(wav_bytes(0.5))
    response = live_api.submit(clip)
    assert response.status_code == 202, response.text
    return str(response.json()["links"]["websocket"])


def closed_with(url: str, frame: str | bytes) -> tuple[int, str]:
    with connect(url, open_timeout=10, max_size=None) as socket:
        assert '"snapshot"' in str(socket.recv(timeout=10))
        socket.send(frame)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                socket.recv(timeout=10)
    assert closed.value.rcvd is not None, "closed without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


@pytest.mark.pipeline
def test_a_job_socket_closes_1007_on_hostile_json_and_keeps_serving(
    job_socket: str, live_api: LiveApi, transactional_db: Any
) -> None:
    for name, body in HOSTILE_JSON.items():
        code, reason = closed_with(job_socket, body.decode("utf-8", "surrogatepass"))
        assert (code, bool(reason)) == (1007, True), name
    # a binary frame: not what this socket takes
    assert closed_with(job_socket, b"\x00\x01")[0] == 1003
    # and the server still answers, on the socket and over HTTP
    code, _ = closed_with(job_socket, "[" * 70 + "]" * 70)
    assert code == 1007
    assert live_api.session.get(live_api.url("/healthz"), timeout=5).ok


@pytest.mark.pipeline
def test_the_live_sockets_close_1007_on_hostile_json_and_keep_serving(
    web: str, transactional_db: Any
) -> None:
    token = Token.objects.create(user=UserFactory()).key
    doors = {
        # ours (with a token) and FunASR's (loopback is a trusted network there)
        ws_url(web, token=token): '{"type": "start", "sample_rate": 16000}',
        web.replace("http://", "ws://"): '{"mode": "2pass", "is_speaking": true}',
    }
    silence = b"\x00\x00" * 1600
    for url, start in doors.items():
        for name, body in HOSTILE_JSON.items():
            frame = body.decode("utf-8", "surrogatepass")
            # as the first message, and after a start and some audio
            for frames in ((frame,), (start, silence, frame)):
                code, reason = live_closed_with(url, *frames)
                assert (code, bool(reason)) == (1007, True), (url, name, frames[:-1])
    # the server still answers, on a socket and over HTTP
    url = web.replace("http://", "ws://")
    assert live_closed_with(url, "[" * 70 + "]" * 70)[0] == 1007
    assert requests.get(f"{web}/healthz", timeout=5).ok
