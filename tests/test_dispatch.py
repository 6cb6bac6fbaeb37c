"""kikipounamu.dispatch: a send the broker refused is made again, once, as soon as
the broker answers; bounded in count and age, and never for work marked stale."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from kikipounamu import dispatch


class Broker:
    """Stands in for ``app.send_task``: refuses while down, records what it took."""

    def __init__(self) -> None:
        self.down = True
        self.taken: list[tuple[str, list[Any], dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, name: str, args: list[Any], options: dict[str, Any]) -> None:
        if self.down:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379.")
        with self.lock:
            self.taken.append((name, args, options))

    def names(self) -> list[str]:
        with self.lock:
            return [f"{name}{args}" for name, args, _ in self.taken]


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Broker:
    fake = Broker()
    monkeypatch.setattr(dispatch, "_publish", fake)
    monkeypatch.setattr(
        dispatch,
        "resender",
        dispatch.Resender(limit=100, max_age=60, first_wait=0.01, max_wait=0.05),
    )
    return fake


def wait_for(condition: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_refused_sends_are_made_once_in_order_when_the_broker_answers(
    broker: Broker,
) -> None:
    for n in range(3):
        assert not dispatch.send(
            "asr.transcribe", [n], what=f"job {n}", task_id=f"t{n}"
        )
    time.sleep(0.2)
    assert broker.taken == [] and len(dispatch.resender) == 3

    broker.down = False
    wait_for(lambda: len(dispatch.resender) == 0)

    assert broker.names() == [
        "asr.transcribe[0]",
        "asr.transcribe[1]",
        "asr.transcribe[2]",
    ]
    # Celery's own publish retries are off for a resend: the loop is the retry.
    assert all(options["retry"] is False for _, _, options in broker.taken)
    assert broker.taken[0][2]["task_id"] == "t0"
    time.sleep(0.1)
    assert len(broker.taken) == 3


def test_a_task_refused_twice_is_held_and_sent_once(broker: Broker) -> None:
    dispatch.send("asr.transcribe", ["a"], what="job a", task_id="same")
    dispatch.send("asr.transcribe", ["a"], what="job a", task_id="same")
    assert len(dispatch.resender) == 1
    broker.down = False
    wait_for(lambda: dispatch.resender.sent == 1)
    time.sleep(0.1)
    assert broker.names() == ["asr.transcribe['a']"]


def test_a_send_that_goes_through_is_not_held(broker: Broker) -> None:
    broker.down = False
    assert dispatch.send("asr.transcribe", ["x"], what="job x")
    assert len(dispatch.resender) == 0 and broker.names() == ["asr.transcribe['x']"]


def test_stale_work_is_not_held(broker: Broker) -> None:
    assert not dispatch.send("asr.live_partial", ["s"], what="live", resend=False)
    assert len(dispatch.resender) == 0


def test_past_its_limit_the_oldest_send_is_left_for_the_reconciler(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(dispatch, "resender", dispatch.Resender(limit=2, max_age=60))
    with caplog.at_level(logging.WARNING, logger="kikipounamu.dispatch"):
        for n in range(3):
            dispatch.send("asr.transcribe", [n], what=f"job {n}", task_id=f"t{n}")
    assert len(dispatch.resender) == 2 and dispatch.resender.dropped == 1
    assert "job 0: more than 2 sends held, left for the reconciler" in caplog.text

    broker.down = False
    wait_for(lambda: len(dispatch.resender) == 0)
    assert broker.names() == ["asr.transcribe[1]", "asr.transcribe[2]"]


def test_a_send_held_past_its_age_is_left_for_the_reconciler(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(
        dispatch,
        "resender",
        dispatch.Resender(limit=10, max_age=0.1, first_wait=0.02, max_wait=0.02),
    )
    with caplog.at_level(logging.WARNING, logger="kikipounamu.dispatch"):
        dispatch.send("asr.transcribe", ["old"], what="job old", task_id="old")
        wait_for(lambda: dispatch.resender.dropped == 1)
    assert "job old: not sent within 0 s, left for the reconciler" in caplog.text
    broker.down = False
    dispatch.send("asr.transcribe", ["new"], what="job new", task_id="new")
    assert broker.names() == ["asr.transcribe['new']"]


def test_a_real_broker_that_is_down_refuses_and_the_send_is_held(
    monkeypatch: pytest.MonkeyPatch, unused_tcp_port: int
) -> None:
    # Celery's real publish, at a port nothing listens on.
    from kikipounamu.celery import app

    monkeypatch.setattr(
        dispatch, "resender", dispatch.Resender(limit=10, max_age=60, first_wait=5)
    )
    with app.connection_for_write(f"redis://127.0.0.1:{unused_tcp_port}/0") as conn:
        monkeypatch.setattr(
            dispatch,
            "_publish",
            lambda name, args, options: app.send_task(
                name,
                args=args,
                connection=conn,
                retry_policy={"max_retries": 0},
                **options,
            ),
        )
        assert not dispatch.send("asr.transcribe", ["z"], what="job z", task_id="z")
    assert len(dispatch.resender) == 1
