"""A file that kills the worker process decoding it, for tests with real workers.

A worker started with ``DJANGO_SETTINGS_MODULE=tests.asr.poison_settings`` has this
app: a job whose file is named ``poison.wav`` SIGKILLs the pool process that decodes
it, as a file that crashes FFmpeg would (PyAV decodes in the worker's process).
"""

from __future__ import annotations

import os
import signal
from typing import Any

from django.apps import AppConfig

POISON_NAME = "poison.wav"
SETTINGS = "tests.asr.poison_settings"


class PoisonConfig(AppConfig):
    name = "tests.asr.poison"
    label = "test_poison"

    def ready(self) -> None:
        from asr.services import processing

        decode = processing._decode

        def decode_or_die(job: Any) -> Any:
            if job.original_filename == POISON_NAME:
                os.kill(os.getpid(), signal.SIGKILL)
            return decode(job)

        processing._decode = decode_or_die
