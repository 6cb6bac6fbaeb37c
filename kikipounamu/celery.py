"""The one Celery app, configured from Django settings (namespace CELERY_)."""

import logging.config
import os
from typing import Any

import click
from celery import Celery
from celery import bootsteps
from celery import signals
from django.conf import settings

from kikipounamu import local

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kikipounamu.settings")

app = Celery("kikipounamu")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_init.connect
@signals.beat_init.connect
def _local_state(sender: Any = None, **_: Any) -> None:
    # A worker or beat is an entry point: it makes this machine's folders, secret
    # key and embedded Redis (settings only declare them), before it connects.
    local.prepare()
    # Pool processes are forked after this: they learn their worker's name here
    # (asr.worker reports their engine under it). Connected at import, as the
    # apps' receivers are not yet when worker_init is sent.
    hostname = getattr(sender, "hostname", None)
    if hostname:
        os.environ["KIKI_WORKER_HOSTNAME"] = hostname


@signals.setup_logging.connect
def _django_logging(**_: Any) -> None:
    # A receiver here stops Celery from replacing the root logger's handlers: the
    # workers log through settings.LOGGING (JSON lines) like the web does. The
    # apps' own worker hooks are connected when they are ready (asr.apps).
    logging.config.dictConfig(settings.LOGGING)


# `celery -A kikipounamu worker -Q asr --gpus 0,1`: one pool process per GPU, each
# pinned to its own (asr.worker.pinned_device). Forked processes inherit ASR_GPUS.
app.user_options["worker"].add(
    click.Option(
        ["--gpus"],
        default=None,
        help="Comma-separated GPU ids; starts one pool process per GPU, each "
        "seeing only its own (sets the concurrency).",
    )
)


class GpuPinning(bootsteps.Step):
    """Applies ``--gpus`` before the pool is created."""

    def __init__(self, parent: Any, gpus: str | None = None, **options: Any) -> None:
        super().__init__(parent, **options)
        ids = [gpu.strip() for gpu in (gpus or "").split(",") if gpu.strip()]
        if ids:
            os.environ["ASR_GPUS"] = ",".join(ids)
            parent.concurrency = len(ids)
            # The pool step may have read the concurrency already.
            parent.min_concurrency = len(ids)


app.steps["worker"].add(GpuPinning)
