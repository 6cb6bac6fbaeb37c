from django.urls import path
from django.urls import re_path

from asr.api import views

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
    re_path(
        r"^transcriptions/(?P<transcription_id>[0-9a-f-]{36})/transcript\.(?P<fmt>txt|srt|vtt|json)$",
        views.TranscriptionTranscriptApi.as_view(),
        name="transcription-transcript",
    ),
]
