"""ASR_ENGINE=funasr through the whole pipeline: HTTP in, a real Celery worker
running AutoModel on a tiny random SenseVoice model, the job row out."""

from __future__ import annotations

import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from asr.models import Transcription
from tests import processes
from tests.asr.funasr_models import tiny_model_dir

pytestmark = pytest.mark.pipeline

LOADED = "funasr model "
# Its own web and queues: the session's whisper worker must not take these jobs.
NAMESPACE = {"KIKI_TEST_NAMESPACE": "-funasr"}


def write_wav(path: Path, seconds: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    pcm = (rng.standard_normal(int(seconds * 16_000)) * 3000).astype(np.int16)
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(16_000)
        fh.writeframes(pcm.tobytes())
    return path


def wait_for_job(job_id: str, timeout: float = 240) -> Transcription:
    # Read from the database rather than polling the API: the row is what the
    # worker wrote, and a GET adds nothing this test is about.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Transcription.objects.get(pk=job_id)
        if job.is_finished:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s")


def load_lines(proc: processes.Process) -> list[str]:
    return [line for line in proc.log().splitlines() if LOADED in line]


@pytest.fixture(scope="module")
def funasr_worker(
    django_db_setup: Any, django_db_blocker: Any
) -> Iterator[processes.Process]:
    # CUDA is asked for on a machine without it; each process serves two jobs.
    proc = processes.start_worker(
        queues="asr",
        **NAMESPACE,
        ASR_ENGINE="funasr",
        ASR_MODEL=str(tiny_model_dir("sensevoice")),
        ASR_DEVICE="cuda",
        ASR_THREADS="1",
        ASR_MAX_SEGMENT_SECONDS="2",
        ASR_WORKER_MAX_TASKS="2",
    )
    proc.wait_for_log(LOADED, timeout=180)
    yield proc
    proc.stop()


def test_jobs_run_on_funasr_with_segments_device_and_recycled_processes(
    own_live_api: Any, funasr_worker: processes.Process, tmp_path: Path
) -> None:
    # given three clips, submitted one after another
    jobs = []
    for i, seconds in enumerate((3.0, 5.0, 1.5)):
        response = own_live_api.submit(write_wav(tmp_path / f"c{i}.wav", seconds, i))
        assert response.status_code == 202, response.text
        jobs.append(wait_for_job(response.json()["id"]))

    # then each succeeded through AutoModel, on the CPU, with timed segments
    for job, seconds in zip(jobs, (3.0, 5.0, 1.5), strict=True):
        assert job.status == "succeeded", (job.error_code, job.error_message)
        assert job.engine == "funasr"
        assert job.device == "cpu"
        assert job.attempts == 1
        assert job.duration == pytest.approx(seconds, abs=0.01)
        assert "<|" not in job.text
        assert job.meta["architecture"] == "SenseVoiceSmall"
        assert "tags" in job.meta
        for segment in job.segments:
            assert 0 <= segment["start"] < segment["end"] <= seconds
        assert job.real_time_factor and job.real_time_factor > 0

    # and the model was loaded once per process, never per job: the first two jobs
    # shared a process, which was then replaced (ASR_WORKER_MAX_TASKS=2)
    pids = [job.meta["worker_pid"] for job in jobs]
    assert pids[0] == pids[1] != pids[2]
    deadline = time.monotonic() + 5
    while len(load_lines(funasr_worker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(load_lines(funasr_worker)) == 2
    # and the missing CUDA was said once per process, in one line each
    log = funasr_worker.log()
    assert log.count("no usable CUDA") == 2
