"""A live session with no live worker to answer: the client is told, not left
waiting, and the session is kept for when one comes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from rest_framework.authtoken.models import Token

from asr.models import Transcription
from tests import processes
from tests.factories import UserFactory
from tests.live_client import stream
from tests.live_client import ws_url
from tests.speech import espeak_available
from tests.speech import speech_stream

pytestmark = [
    pytest.mark.pipeline,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not espeak_available(), reason="espeak-ng is installed by `make test`"
    ),
]

NAMESPACE = {
    "KIKI_TEST_NAMESPACE": "-live-no-worker",
    "LIVE_FINISH_TIMEOUT": "3",
    "LIVE_RESUME_SECONDS": "1",
}


def test_with_no_live_worker_the_client_is_told_and_the_session_finishes_later(
    own_web: str, tmp_path: Path
) -> None:
    token = Token.objects.create(user=UserFactory()).key
    pcm, _ = speech_stream(["She sells sea shells by the sea shore."], tmp_path)
    run = asyncio.run(stream(ws_url(own_web, token=token), pcm, timeout=30))
    assert run.close_code == 1013
    assert "finished when one does" in run.close_reason
    (error,) = run.of("error")
    assert error["code"] == "workers_unavailable"
    job = Transcription.objects.get(pk=run.session)
    assert job.status == "running"
    # A live worker comes: the delayed finish the dropped stream asked for, or the
    # reconciler's, ends the session with the final it had pending.
    worker = processes.start_worker(queues="live,live_partial", **NAMESPACE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job.refresh_from_db()
            if job.status != "running":
                break
            time.sleep(0.2)
        assert job.status == "succeeded", job.status
        assert "shells" in job.text.lower() or "sea" in job.text.lower()
        assert job.utterances.count() == 1
    finally:
        worker.stop()
