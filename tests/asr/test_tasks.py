"""The asr tasks' worker hooks, in-process."""

from __future__ import annotations

import pytest

from asr import tasks
from asr.realtime import sender


@pytest.mark.parametrize("task", [tasks.transcribe, tasks.transcribe_chunk])
def test_after_an_engine_task_its_pushes_are_flushed_before_any_recycling(
    task: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(sender, "flush", lambda: calls.append("flush") or True)
    monkeypatch.setattr(tasks, "recycle_if_over_vram", lambda: calls.append("vram"))

    tasks._after_asr_task(sender=task)

    assert calls == ["flush", "vram"]


def test_other_tasks_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(sender, "flush", lambda: calls.append("flush") or True)

    tasks._after_asr_task(sender=tasks.reconcile)

    assert calls == []
