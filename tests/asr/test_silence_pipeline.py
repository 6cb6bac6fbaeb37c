"""Audio in which nobody speaks, through real processes: HTTP in, Redis, a Celery
worker with the whisper engine as a worker loads it (ASR_WHISPER_VAD on), text out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from asr.chunking import write_wav
from tests.asr import quiet_audio

pytestmark = pytest.mark.pipeline

CLIPS = {
    "silence.wav": lambda: quiet_audio.silence(10),
    "room-noise.wav": lambda: quiet_audio.noise(10, dbfs=-50, colour="pink"),
}


def test_a_job_without_speech_succeeds_with_empty_text(
    live_api: Any, worker: Any, tmp_path: Path
) -> None:
    # given ten seconds of digital silence and ten of quiet room noise
    paths = []
    for name, make in CLIPS.items():
        samples: np.ndarray = make()
        write_wav(tmp_path / name, samples)
        paths.append(tmp_path / name)

    # when each is submitted through the REST API
    submitted = []
    for path in paths:
        response = live_api.submit(path)
        assert response.status_code == 202, response.text
        submitted.append(response.json()["id"])

    # then each job succeeds with no text and no segments, not with made-up words,
    # and says the VAD filter heard no speech
    for job_id in submitted:
        job = live_api.wait(job_id)
        assert job["status"] == "succeeded", job
        assert job["engine"] == "whisper"
        assert job["text"] == ""
        assert job["segments"] == []
        assert job["duration"] == pytest.approx(10, abs=0.01)
        assert job["meta"]["speech_seconds"] == 0
        txt = live_api.session.get(job["links"]["txt"], timeout=10)
        assert txt.status_code == 200 and txt.text.strip() == ""
