"""GPU pinning and process recycling of ASR workers (no GPU needed)."""

from __future__ import annotations

import os
import types
from typing import Any

import billiard.pool
import pytest

from asr import worker
from kikipounamu.celery import GpuPinning
from kikipounamu.celery import app


def test_gpus_option_gives_one_pool_process_per_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ASR_GPUS", raising=False)
    parent = types.SimpleNamespace(concurrency=8, min_concurrency=8)
    GpuPinning(parent, gpus="0, 1")
    assert parent.concurrency == parent.min_concurrency == 2
    assert os.environ["ASR_GPUS"] == "0,1"
    monkeypatch.delenv("ASR_GPUS")


def test_the_worker_command_accepts_gpus() -> None:
    options = {opt.name for opt in app.user_options["worker"]}
    assert "gpus" in options


@pytest.mark.parametrize(("index", "gpu"), [(0, "3"), (1, "5"), (2, "3")])
def test_each_pool_process_sees_only_its_gpu(
    monkeypatch: pytest.MonkeyPatch, index: int, gpu: str
) -> None:
    # given a worker started with --gpus 3,5, in pool process `index`
    monkeypatch.setenv("ASR_GPUS", "3,5")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(
        "billiard.process.current_process", lambda: types.SimpleNamespace(index=index)
    )

    # then it is pinned to one GPU, which jobs record by its real number
    device, label = worker.pinned_device()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == gpu
    assert (device, label) == ("cuda", f"cuda:{gpu}")
    options = worker.engine_options()
    assert options["device_label"] == f"cuda:{gpu}"


def test_without_gpus_the_device_setting_is_used(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    monkeypatch.delenv("ASR_GPUS", raising=False)
    settings.ASR_GPUS = ""
    settings.ASR_DEVICE = "cpu"
    assert worker.pinned_device() == ("cpu", "")


def test_a_recycle_request_trips_celerys_memory_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(billiard.pool, "mem_rss", billiard.pool.mem_rss)
    worker.request_recycle()
    # billiard compares this with worker_max_memory_per_child after each task
    assert billiard.pool.mem_rss() > 2**40


def test_no_vram_check_on_cpu_engines(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.ASR_WORKER_MAX_VRAM_MB = 1
    engine = types.SimpleNamespace(device="cpu")
    monkeypatch.setattr(worker, "_engine", engine)
    assert worker.recycle_if_over_vram() is False


def test_recycling_settings_reach_celery() -> None:
    from django.conf import settings

    assert settings.CELERY_WORKER_PROC_ALIVE_TIMEOUT >= 60
    assert (
        app.conf.worker_proc_alive_timeout == settings.CELERY_WORKER_PROC_ALIVE_TIMEOUT
    )
