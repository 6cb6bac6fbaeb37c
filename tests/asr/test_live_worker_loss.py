"""A live worker killed mid-utterance: the utterance is transcribed again by the
next process and its final reaches the client once."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from rest_framework.authtoken.models import Token

from asr.models import LiveUtterance
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

# Its own web and queues: no other live worker may take the finals.
NAMESPACE = {
    "KIKI_TEST_NAMESPACE": "-live-loss",
    # Finals only: the one task running when the process is killed is a final. (A
    # prepared final only stores text made ahead, in milliseconds: the kill would
    # miss it.)
    "LIVE_PARTIAL_INTERVAL": "1000",
    "LIVE_PREPARE": "false",
}
# Each final takes as long as its audio, so the kill lands inside one.
SLOW_ENGINE = {**NAMESPACE, "ASR_ENGINE": "synthetic", "ASR_SYNTHETIC_RTF": "1.0"}


def _kill_pool_process_in_first_final(worker: processes.Process) -> threading.Thread:
    def kill() -> None:
        worker.wait_for_log("asr.live_final[", timeout=60)
        time.sleep(0.5)
        (child,) = psutil.Process(worker.popen.pid).children()
        os.kill(child.pid, signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def test_a_final_whose_worker_died_is_made_again_and_sent_once(
    own_web: str, tmp_path: Path
) -> None:
    worker = processes.start_worker(queues="live,live_partial", **SLOW_ENGINE)
    try:
        token = Token.objects.create(user=UserFactory()).key
        pcm, _ = speech_stream(
            [
                "The quick brown fox jumps over the lazy dog.",
                "She sells sea shells by the sea shore.",
            ],
            tmp_path,
        )
        killer = _kill_pool_process_in_first_final(worker)
        run = asyncio.run(stream(ws_url(own_web, token=token), pcm, timeout=90))
        killer.join(5)
        assert not killer.is_alive()
        assert [f["index"] for f in run.of("final")] == [0, 1]
        (end,) = run.of("end")
        assert end["job"]["status"] == "succeeded"
        assert LiveUtterance.objects.filter(transcription_id=run.session).count() == 2
        # The first final ran twice: once in the killed process, once after.
        log = worker.log()
        assert "WorkerLostError" in log or "signal 9" in log, worker.log_tail()
    finally:
        worker.stop()
