from django.urls import path

from asr.ops.consumers import OpsConsumer
from asr.realtime import consumers
from asr.realtime.funasr_protocol import FunasrLiveConsumer
from asr.realtime.live import NativeLiveConsumer
from asr.realtime.openai_realtime import OpenAIRealtimeConsumer

websocket_urlpatterns = [
    path("ws/ops/", OpsConsumer.as_asgi()),
    path("ws/live/", NativeLiveConsumer.as_asgi()),
    path("ws/funasr/", FunasrLiveConsumer.as_asgi()),
    # OpenAI's realtime transcription (the openai client's base_url + /realtime).
    path("v1/realtime", OpenAIRealtimeConsumer.as_asgi()),
    path("ws/transcriptions/", consumers.FeedConsumer.as_asgi()),
    path(
        "ws/transcriptions/<uuid:transcription_id>/",
        consumers.JobConsumer.as_asgi(),
    ),
    # FunASR's clients connect to the root (ws://host:port): only "/" matches here,
    # the other paths above are endpoints of their own.
    path("", FunasrLiveConsumer.as_asgi()),
]
