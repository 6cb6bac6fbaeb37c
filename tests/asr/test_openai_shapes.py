"""The OpenAI-compatible door's answers, from job states (no server)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.audio import TranscriptionTextDeltaEvent
from openai.types.audio import TranscriptionTextDoneEvent
from openai.types.audio import TranscriptionVerbose

from asr.openai_api import shapes
from kikipounamu.errors import ApplicationError


def state(**fields: Any) -> dict[str, Any]:
    return {
        "id": "00000000-0000-0000-0000-000000000001",
        "status": "succeeded",
        "seq": 3,
        "text": "Hello world. Second part.",
        "segments": [
            {
                "start": 0.0,
                "end": 1.2,
                "text": "Hello world.",
                "words": [
                    {"start": 0.0, "end": 0.5, "text": "Hello", "probability": 0.9},
                    {"start": 0.5, "end": 1.2, "text": "world.", "probability": 0.8},
                ],
                "avg_logprob": -0.2,
                "compression_ratio": 1.1,
                "no_speech_prob": 0.01,
                "temperature": 0.0,
            },
            {"start": 1.5, "end": 2.5, "text": " Second part. "},
            {"start": 2.5, "end": 2.6, "text": ""},
        ],
        "duration": 2.75,
        "language": "",
        "detected_language": "en",
        "error": None,
        **fields,
    }


def verbose(granularities: tuple[str, ...], **fields: Any) -> dict[str, Any]:
    content_type, body = shapes.transcription_answer(
        state(**fields),
        response_format="verbose_json",
        granularities=granularities,
        temperature=None,
    )
    assert content_type == "application/json"
    return dict(json.loads(body))


def test_verbose_json_has_the_fields_of_openais_type() -> None:
    body = verbose(("word", "segment"))
    parsed = TranscriptionVerbose.model_validate(body)
    assert (parsed.language, parsed.duration) == ("en", 2.75)
    assert [s.id for s in parsed.segments or []] == [0, 1]
    first = (parsed.segments or [])[0]
    assert (first.seek, first.avg_logprob, first.tokens) == (0, -0.2, [])
    assert [(w.word, w.start, w.end) for w in parsed.words or []] == [
        ("Hello", 0.0, 0.5),
        ("world.", 0.5, 1.2),
    ]
    assert body["usage"] == {"type": "duration", "seconds": 2.75}


def test_verbose_json_gives_segments_by_default_and_only_words_when_only_asked() -> (
    None
):
    assert "words" not in verbose(())
    assert "segments" in verbose(())
    words_only = verbose(("word",))
    assert "segments" not in words_only and len(words_only["words"]) == 2


def test_a_segment_without_the_decoders_figures_has_values_that_pass_checks() -> None:
    second = verbose(("segment",))["segments"][1]
    assert second["text"] == "Second part."
    assert (second["avg_logprob"], second["no_speech_prob"]) == (0.0, 0.0)
    assert (second["compression_ratio"], second["temperature"]) == (1.0, 0.0)


@pytest.mark.parametrize(
    ("response_format", "content_type", "start"),
    [
        ("text", "text/plain; charset=utf-8", "Hello world. Second part.\n"),
        ("srt", "application/x-subrip; charset=utf-8", "1\n00:00:00,000 --> "),
        ("vtt", "text/vtt; charset=utf-8", "WEBVTT"),
        ("json", "application/json", '{"text": "Hello world. Second part."'),
    ],
)
def test_the_other_formats(response_format: str, content_type: str, start: str) -> None:
    got_type, body = shapes.transcription_answer(
        state(), response_format=response_format, granularities=(), temperature=None
    )
    assert got_type == content_type
    assert body.decode().startswith(start)


def test_errors_have_openais_shape_and_the_job_where_there_is_one() -> None:
    body = json.loads(
        shapes.error_body(
            ApplicationError(
                "No.", code="busy", status=503, extra={"retry_after": 5, "job_id": "j"}
            )
        )
    )
    assert body == {
        "error": {
            "message": "No.",
            "type": "server_error",
            "param": None,
            "code": "busy",
            "job_id": "j",
        }
    }
    unauthorised = json.loads(shapes.error_body(ApplicationError("x", status=401)))
    assert unauthorised["error"]["code"] == "invalid_api_key"


def test_a_failed_job_is_the_clients_error_when_its_audio_was_to_blame() -> None:
    failure = shapes.job_failure(
        state(
            status="failed",
            error={"code": "unsupported_language", "message": "English only."},
        ),
        job_url="http://x/api/v1/transcriptions/1",
    )
    assert failure.status_code == 400
    lost = shapes.job_failure(
        state(status="failed", error={"code": "worker_lost", "message": "Lost."}),
        job_url="u",
    )
    assert lost.status_code == 500 and lost.extra["job_id"] == state()["id"]


def test_deltas_are_one_a_segment_and_add_up_to_the_text() -> None:
    deltas = shapes.TextDeltas()
    first = {"segments": [{"text": "Hello world."}]}
    assert deltas.new(first) == ["Hello world."]
    assert deltas.new(first) == []
    assert deltas.new(state()) == [" Second part."]
    # events are made of the openai package's types
    event = TranscriptionTextDeltaEvent.model_validate(
        json.loads(shapes.delta_event("x")[len(b"data: ") :])
    )
    done = TranscriptionTextDoneEvent.model_validate(
        json.loads(shapes.done_event(state())[len(b"data: ") :])
    )
    assert (event.delta, done.text) == ("x", state()["text"])


def test_deltas_stop_where_the_segments_change_under_them() -> None:
    deltas = shapes.TextDeltas()
    deltas.new({"segments": [{"text": "Hello word."}]})
    # an attempt that started over: shorter for now, then heard otherwise
    assert deltas.new({"segments": []}) == []
    assert deltas.new({"segments": [{"text": "Hello world."}, {"text": "Y"}]}) == []
    assert deltas.new(state()) == []


def test_served_models_are_the_alias_and_the_configured_model(settings: Any) -> None:
    settings.ASR_ENGINE, settings.ASR_MODEL = "whisper", ""
    assert shapes.served_models() == ["whisper-1", "whisper-tiny.en"]
    settings.ASR_ENGINE, settings.ASR_MODEL = "funasr", "/models/SenseVoiceSmall/"
    assert shapes.served_models() == ["whisper-1", "SenseVoiceSmall"]
    with pytest.raises(ApplicationError, match="whisper-1, SenseVoiceSmall"):
        shapes.model_check("whisper-large-v3")
