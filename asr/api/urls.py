from django.urls import path
from django.urls import register_converter

from asr.api import views
from asr.formats import FORMATS


class TranscriptFormatConverter:
    """One of the transcript formats (txt, srt, vtt, json): anything else is a 404."""

    regex = "|".join(FORMATS)

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(TranscriptFormatConverter, "transcript_format")

app_name = "asr-api"

urlpatterns = [
    path(
        "transcriptions",
        views.TranscriptionListCreateApi.as_view(),
        name="transcription-list",
    ),
    path(
        "transcriptions/<uuid:transcription_id>",
        views.TranscriptionDetailApi.as_view(),
        name="transcription-detail",
    ),
    path(
        "transcriptions/<uuid:transcription_id>/retry",
        views.TranscriptionRetryApi.as_view(),
        name="transcription-retry",
    ),
    path(
        "transcriptions/<uuid:transcription_id>/events",
        views.TranscriptionEventsApi.as_view(),
        name="transcription-events",
    ),
    path(
        "transcriptions/<uuid:transcription_id>/audio",
        views.TranscriptionAudioApi.as_view(),
        name="transcription-audio",
    ),
    path(
        "transcriptions/<uuid:transcription_id>/transcript.<transcript_format:fmt>",
        views.TranscriptionTranscriptApi.as_view(),
        name="transcription-transcript",
    ),
]
