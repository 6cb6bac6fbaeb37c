"""Bad input through the live system: real HTTP into uvicorn, Redis, a Celery worker.

Every bad file or request ends one of two ways, never in a 500 and never half-written:
a 4xx whose JSON error names the problem (and no job row, no stored file), or a 202
whose job fails at once (attempts == 1) with the code and a message.

The web and worker here run with small limits (1 MB uploads, 30 s of audio) on a Redis
database of their own, so the session's default worker never takes these jobs.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import tempfile
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import requests
from django.conf import settings
from rest_framework.authtoken.models import Token

from asr import audio
from asr.models import Transcription
from kikipounamu.redis_server import with_db
from tests import audio_files
from tests import processes
from tests.audio_files import BAD_FILES
from tests.audio_files import BadFile
from tests.conftest import LiveApi
from tests.factories import UserFactory
from tests.speech import espeak
from tests.speech import espeak_available

pytestmark = [
    pytest.mark.pipeline,
    pytest.mark.skipif(
        not espeak_available(), reason="espeak-ng is installed by `make test`"
    ),
]

URL = "/api/v1/transcriptions"
MAX_UPLOAD_BYTES = 1_000_000
# Requests above this are spooled to a temporary file and probed by path (Django's
# FILE_UPLOAD_MAX_MEMORY_SIZE): the small bad files stay in memory, the speech clips
# with hostile names and the just-too-large upload take the temporary-file way.
MEMORY_UPLOAD_BYTES = 100_000

# Bad files the web refuses from their headers alone, with the HTTP status; every
# other file in the corpus is accepted and must fail in the worker.
REFUSED_AT_UPLOAD = {
    "truncated_ogg_in_headers": 415,
    "random_bytes_ogg": 415,
    "random_bytes_wav": 415,
    "text_named_mp3": 415,
    "hls_playlist": 415,
    "ffconcat_list": 415,
    "wav_unknown_codec": 415,
    "png_image": 422,
    "mp4_without_audio": 422,
    "long_opus_ogg": 422,  # the Ogg's last page states 60 s
}


def _own_redis_url() -> str:
    # Another database number of the same Redis (the embedded one, or CI's).
    db = redis.Redis.from_url(settings.REDIS_URL).connection_pool.connection_kwargs.get(
        "db", 0
    )
    return with_db(settings.REDIS_URL, 13 if db == 14 else 14)


@pytest.fixture(scope="module")
def limited_web(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    """A web and a worker with small limits; yields the web's base URL."""
    redis_url = _own_redis_url()
    env = {
        "ASR_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "ASR_MAX_DURATION_SECONDS": str(audio_files.DURATION_LIMIT_SECONDS),
        "FILE_UPLOAD_MAX_MEMORY_SIZE": str(MEMORY_UPLOAD_BYTES),
        "REDIS_URL": redis_url,
    }
    web, base = processes.start_web(**env)
    try:
        worker = processes.start_worker(**env)
    except BaseException:
        web.stop()
        raise
    yield base
    web.stop()
    worker.stop()
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{settings.REDIS_KEY_PREFIX}*", count=1000):
        client.delete(key)


@pytest.fixture
def api(transactional_db: Any, limited_web: str) -> LiveApi:
    user = UserFactory()
    return LiveApi(limited_web, Token.objects.create(user=user).key)


@pytest.fixture(scope="module")
def speech_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clip = espeak(
        "Please call Stella and ask her to bring these things from the store.",
        tmp_path_factory.mktemp("speech") / "stella.wav",
    )
    assert clip.stat().st_size > MEMORY_UPLOAD_BYTES  # so it is spooled to disk
    return clip


# What is on disk and in the database ------------------------------------------------


def media_files() -> set[Path]:
    return {p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file()}


def upload_temp_files() -> set[str]:
    # Django spools large uploads to <tmp>/tmpXXXX.upload.<ext>.
    return {name for name in os.listdir(tempfile.gettempdir()) if ".upload" in name}


def assert_no_upload_left_behind(before: set[str]) -> None:
    # The web closes, and so deletes, a spooled upload just after it answers.
    deadline = time.monotonic() + 5
    while upload_temp_files() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not upload_temp_files() - before


class Snapshot:
    """Job rows, stored audio and spooled uploads, to compare after a request."""

    def __init__(self) -> None:
        self.rows = Transcription.objects.count()
        self.media = media_files()
        self.temp = upload_temp_files()

    def assert_nothing_written(self) -> None:
        assert Transcription.objects.count() == self.rows
        assert media_files() == self.media
        assert_no_upload_left_behind(self.temp)


def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]


def assert_failed_at_once(api: LiveApi, response: requests.Response, code: str) -> None:
    assert response.status_code == 202, response.text
    job = api.wait(response.json()["id"], timeout=60)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == code, job["error"]
    assert job["error"]["message"]
    assert job["attempts"] == 1
    assert job["text"] == ""


def post_multipart(
    api: LiveApi, disposition: bytes, content: bytes
) -> requests.Response:
    """POST one file part whose Content-Disposition parameters are exactly
    ``disposition``: raw bytes, so that names no HTTP library would send get sent."""
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; '
        + disposition
        + b"\r\nContent-Type: application/octet-stream\r\n\r\n"
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return api.session.post(
        api.url(URL),
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=30,
    )


class RawUpload:
    """A multipart upload over http.client, so that the answer can be read while the
    body is still being sent, the way a client sees a server that stops it early."""

    def __init__(self, api: LiveApi, *, chunked: bool, size: int) -> None:
        base = urlsplit(api.base)
        self.conn = http.client.HTTPConnection(base.hostname, base.port, timeout=30)
        self.boundary = uuid.uuid4().hex
        self.head = (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="big.wav"\r\nContent-Type: audio/wav\r\n\r\n'
        ).encode()
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.chunked = chunked
        self.size = size
        self.conn.putrequest("POST", URL)
        self.conn.putheader("Authorization", api.session.headers["Authorization"])
        self.conn.putheader(
            "Content-Type", f"multipart/form-data; boundary={self.boundary}"
        )
        if chunked:
            self.conn.putheader("Transfer-Encoding", "chunked")
        else:
            length = len(self.head) + size + len(self.tail)
            self.conn.putheader("Content-Length", str(length))
        self.conn.endheaders()
        self.sent = 0

    def _answered(self) -> bool:
        return bool(select.select([self.conn.sock], [], [], 0)[0])

    def send_until_answered(self, piece: int = 64 * 1024) -> None:
        pieces = [self.head] + [b"\0" * piece] * (self.size // piece) + [self.tail]
        try:
            for data in pieces:
                if self._answered():
                    return
                self.conn.send(
                    b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data
                )
                self.sent += len(data)
            if self.chunked:
                self.conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: the answer is waiting to be read

    def answer(self) -> tuple[int, dict[str, Any]]:
        response = self.conn.getresponse()
        body = response.read()
        self.conn.close()
        return response.status, json.loads(body)


def files_named_with(token: str) -> list[Path]:
    """Files whose path holds ``token``: anywhere in the repository (but its
    virtualenv and git data) or in the temporary directory."""
    found = []
    for top in (processes.ROOT, Path(tempfile.gettempdir())):
        for folder, dirs, names in os.walk(top):
            dirs[:] = [
                d
                for d in dirs
                if d not in {".venv", ".git", "node_modules", "__pycache__"}
                and not (top != processes.ROOT and d.startswith("pytest-of-"))
            ]
            found += [Path(folder, n) for n in names if token in n or token in folder]
    return found


# The bad-file corpus ------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_FILES, ids=[bad.id for bad in BAD_FILES])
def test_bad_file_is_refused_or_its_job_fails_with_the_right_code(
    api: LiveApi, bad: BadFile, tmp_path: Path
) -> None:
    path = bad.build(tmp_path / bad.filename)
    before = Snapshot()

    response = api.submit(path)

    if bad.id in REFUSED_AT_UPLOAD:
        assert_error(response, REFUSED_AT_UPLOAD[bad.id], bad.code)
        before.assert_nothing_written()
    else:
        assert_failed_at_once(api, response, bad.code)


# Bad requests -------------------------------------------------------------------------


def _empty_file(api: LiveApi, tmp_path: Path) -> requests.Response:
    return api.submit(audio_files.empty_file(tmp_path / "empty.wav"))


def _no_file_field(api: LiveApi, tmp_path: Path) -> requests.Response:
    # Multipart, but the audio is under another name.
    return api.session.post(
        api.url(URL), files={"audio": ("a.wav", b"RIFF")}, data={"language": "en"}
    )


def _file_named_dot_dot(api: LiveApi, tmp_path: Path) -> requests.Response:
    # Django drops an upload whose name is only "..": as if no file were sent.
    return post_multipart(api, b'filename=".."', b"RIFF" * 100)


def _name_in_an_unknown_charset(api: LiveApi, tmp_path: Path) -> requests.Response:
    # Django cannot decode the name, so it drops the upload, as for "..".
    return post_multipart(api, b"filename*=x-unknown''clip.wav", b"RIFF" * 100)


def _json_body(api: LiveApi, tmp_path: Path) -> requests.Response:
    return api.session.post(api.url(URL), json={"file": "aGVsbG8="})


def _just_over_the_limit(api: LiveApi, tmp_path: Path) -> requests.Response:
    # Inside the web's allowance for the multipart envelope, so the service decides.
    path = tmp_path / "big.wav"
    path.write_bytes(
        audio_files.wav_header(data_bytes=MAX_UPLOAD_BYTES)
        + b"\0" * (MAX_UPLOAD_BYTES - 43)
    )
    return api.submit(path)


Send = Callable[[LiveApi, Path], requests.Response]
BAD_REQUESTS: dict[str, tuple[Send, int, str]] = {
    "empty_file": (_empty_file, 400, audio.EMPTY_AUDIO),
    "no_file_field": (_no_file_field, 400, "file_missing"),
    "file_named_dot_dot": (_file_named_dot_dot, 400, "file_missing"),
    "name_in_an_unknown_charset": (_name_in_an_unknown_charset, 400, "file_missing"),
    "json_body": (_json_body, 415, "unsupported_media_type"),
    "just_over_the_upload_limit": (_just_over_the_limit, 413, audio.TOO_LARGE),
}


@pytest.mark.parametrize("case", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_request_gets_a_clear_4xx_and_writes_nothing(
    api: LiveApi, case: tuple[Send, int, str], tmp_path: Path
) -> None:
    send, status, code = case
    before = Snapshot()
    assert_error(send(api, tmp_path), status, code)
    before.assert_nothing_written()


def test_upload_declared_too_large_is_refused_before_its_body_is_read(
    api: LiveApi,
) -> None:
    before = Snapshot()
    upload = RawUpload(api, chunked=False, size=3 * MAX_UPLOAD_BYTES)

    # Not one byte of the body is sent: the answer comes from the headers alone.
    status, body = upload.answer()

    assert status == 413
    assert body["error"]["code"] == audio.TOO_LARGE
    assert "1 MB" in body["error"]["message"]
    before.assert_nothing_written()


def test_chunked_upload_without_length_is_stopped_once_past_the_limit(
    api: LiveApi,
) -> None:
    before = Snapshot()
    # Far more than the limit, so that a server reading it all would be noticed.
    upload = RawUpload(api, chunked=True, size=32 * MAX_UPLOAD_BYTES)

    upload.send_until_answered()
    status, body = upload.answer()

    assert status == 413
    assert body["error"]["code"] == audio.TOO_LARGE
    assert upload.sent < upload.size
    before.assert_nothing_written()


# Hostile file names -------------------------------------------------------------------

# (Content-Disposition parameters, the file name the job must show) for a token that
# makes every name unique, so that a file written anywhere under it can be found.
HOSTILE_NAMES: dict[str, Callable[[str], tuple[str, str]]] = {
    "parent_dirs": lambda t: (
        f'filename="../../../../../../../../tmp/kiki-{t}-rel.wav"',
        f"kiki-{t}-rel.wav",
    ),
    "absolute_path": lambda t: (
        f'filename="/tmp/kiki-{t}-abs.wav"',
        f"kiki-{t}-abs.wav",
    ),
    "windows_path": lambda t: (
        f'filename="..\\..\\..\\kiki-{t}-win.wav"',
        f"kiki-{t}-win.wav",
    ),
    "html_entity_slashes": lambda t: (
        f'filename="..&#47;..&#47;tmp&#47;kiki-{t}-entity.wav"',
        f"kiki-{t}-entity.wav",
    ),
    "nul_byte": lambda t: (f'filename="kiki-{t}\0-nul.wav"', f"kiki-{t}-nul.wav"),
    "rfc2231_newline_nul_and_slashes": lambda t: (
        f"filename*=UTF-8''..%2F..%2Ftmp%2Fkiki-{t}%0A%0D%00-enc.wav",
        f"kiki-{t}-enc.wav",
    ),
    "bidi_override": lambda t: (
        f'filename="kiki-{t}-\u202egnp.wav"',
        f"kiki-{t}-gnp.wav",
    ),
    "very_long": lambda t: (
        f'filename="kiki-{t}-{"a" * 300}.wav"',
        f"kiki-{t}-{'a' * 300}"[:251] + ".wav",
    ),
}


@pytest.mark.parametrize("make_name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_hostile_file_name_is_shown_as_its_base_name_and_written_nowhere(
    api: LiveApi, make_name: Callable[[str], tuple[str, str]], speech_clip: Path
) -> None:
    token = uuid.uuid4().hex
    disposition, shown = make_name(token)
    before = files_named_with(token)
    spooled = upload_temp_files()

    response = post_multipart(api, disposition.encode(), speech_clip.read_bytes())

    # the job is accepted, shows only the base name, and runs as any other
    assert response.status_code == 202, response.text
    assert response.json()["original_filename"] == shown
    job = api.wait(response.json()["id"], timeout=60)
    assert job["status"] == "succeeded", job
    assert job["original_filename"] == shown
    assert "stella" in job["text"].lower() or "store" in job["text"].lower()

    # its audio is stored under MEDIA_ROOT by the job's id, not the client's name
    stored = Path(Transcription.objects.get(pk=job["id"]).audio.path).resolve()
    assert stored.is_relative_to(Path(settings.MEDIA_ROOT).resolve())
    assert stored.name == f"{job['id']}.wav"
    assert stored.is_file()

    # and nothing named by the client was written anywhere, nor left in tmp
    assert files_named_with(token) == before == []
    assert_no_upload_left_behind(spooled)
    assert not Path(tempfile.gettempdir(), f"kiki-{token}-rel.wav").exists()
    assert not Path(tempfile.gettempdir(), f"kiki-{token}-abs.wav").exists()
