"""What a job asks of the engine (asr.services.job_options): stored at intake, given
to the engine by whoever runs the job, kept through its attempts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from asr import services
from asr.engines import Segment
from asr.engines import TranscriptionResult
from asr.engines import load_engine
from asr.models import Transcription
from asr.services.job_options import JobOptions
from asr.services.job_options import job_options
from kikipounamu.errors import ApplicationError
from tests.asr.test_api import wav_bytes
from tests.audio_files import speech
from tests.speech import espeak_available


class RecordingEngine:
    name = "fake"
    model_name = "fake-model"
    device = "cpu"

    def __init__(self) -> None:
        self.options: list[dict[str, Any]] = []

    def transcribe(
        self,
        samples: np.ndarray,
        sample_rate: int = 16_000,
        language: str | None = None,
        **options: Any,
    ) -> TranscriptionResult:
        self.options.append({k: v for k, v in options.items() if k != "on_segment"})
        return TranscriptionResult(
            text="hello", language="en", segments=[Segment(0.0, 1.0, "hello")]
        )


@pytest.fixture(autouse=True)
def _own_media_root(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


def submit(options: JobOptions | None) -> Transcription:
    return services.transcription_create(
        owner=None,
        audio=SimpleUploadedFile("clip.wav", wav_bytes()),
        source=Transcription.Source.OPENAI,
        options=options,
    )


@pytest.mark.django_db
def test_options_go_from_intake_to_the_engine_and_stay_on_the_job() -> None:
    # given a job that asks for words and a prompt
    job = submit(JobOptions(word_timestamps=True, prompt="Kikipounamu"))
    assert job.meta == {"options": {"word_timestamps": True, "prompt": "Kikipounamu"}}

    # when a worker runs it
    engine = RecordingEngine()
    services.transcription_process(
        transcription_id=str(job.id), task_id=job.task_id, hostname="w", engine=engine
    )

    # then the engine was asked, and the job still says what it asked
    assert engine.options == [{"word_timestamps": True, "prompt": "Kikipounamu"}]
    job.refresh_from_db()
    assert job.status == "succeeded"
    assert job_options(job.meta) == JobOptions(
        word_timestamps=True, prompt="Kikipounamu"
    )


@pytest.mark.django_db
def test_a_job_that_asks_nothing_stores_nothing_and_asks_nothing() -> None:
    job = submit(None)
    assert job.meta == {}
    engine = RecordingEngine()
    services.transcription_process(
        transcription_id=str(job.id), task_id=job.task_id, hostname="w", engine=engine
    )
    assert engine.options == [{}]


def test_out_of_range_options_are_refused() -> None:
    with pytest.raises(ApplicationError, match="between 0 and 1"):
        JobOptions(temperature=1.5)
    with pytest.raises(ApplicationError, match="limit is 1000"):
        JobOptions(prompt="x" * 1001)
    # stored ones that make no sense any more are the defaults
    assert job_options({"options": {"temperature": "hot"}}) == JobOptions()
    assert job_options({"options": ["word_timestamps"]}) == JobOptions()


@pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng is installed by `make test`"
)
def test_whisper_gives_words_and_the_decoders_figures_when_asked(
    tmp_path: Path,
) -> None:
    engine = load_engine("whisper", threads=2)
    samples = speech("Hello world, this is a test.", tmp_path)
    plain = engine.transcribe(samples, 16_000, "en").segments_as_dicts()
    assert set(plain[0]) == {"start", "end", "text"}
    asked = engine.transcribe(
        samples,
        16_000,
        "en",
        word_timestamps=True,
        segment_details=True,
        prompt="Hello world.",
        temperature=0.2,
    ).segments_as_dicts()
    first = asked[0]
    assert set(first) == {
        "start",
        "end",
        "text",
        "words",
        "avg_logprob",
        "compression_ratio",
        "no_speech_prob",
        "temperature",
    }
    assert first["words"][0]["text"].lower().startswith("hello")
    assert first["avg_logprob"] < 0 and first["temperature"] == 0.2
