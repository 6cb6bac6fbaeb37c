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
        "transcriptions/<str:transcription_id>",
        views.TranscriptionDetailApi.as_view(),
        name="transcription-detail",
    ),
    re_path(
        r"^transcriptions/(?P<transcription_id>[^/]+)/transcript\.(?P<fmt>txt|srt|vtt|json)$",
        views.TranscriptionTranscriptApi.as_view(),
        name="transcription-transcript",
    ),
]
