from django.urls import path

from asr import consumers

websocket_urlpatterns = [
    path("ws/transcriptions/", consumers.FeedConsumer.as_asgi()),
    path(
        "ws/transcriptions/<uuid:transcription_id>/",
        consumers.JobConsumer.as_asgi(),
    ),
]
