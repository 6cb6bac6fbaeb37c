"""kikipounamu.process_queue: one serving thread per process, started on first use."""

from __future__ import annotations

import multiprocessing
import queue
import threading

from kikipounamu.process_queue import ProcessQueue

served: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()


def _serve() -> None:
    while True:
        item = _work.get()
        served.put((threading.current_thread().name, item))


_work: ProcessQueue[int] = ProcessQueue("test-worker", _serve)


def _in_child(result: multiprocessing.SimpleQueue) -> None:  # type: ignore[type-arg]
    # The parent's thread is not here: the first put starts this process's own.
    result.put(_work.started)
    _work.put(2)
    result.put(served.get(timeout=10))


def test_a_thread_per_process_started_on_first_use() -> None:
    assert not _work.started
    _work.put(1)
    assert _work.started
    assert served.get(timeout=10) == ("test-worker", 1)

    ctx = multiprocessing.get_context("fork")
    result = ctx.SimpleQueue()
    child = ctx.Process(target=_in_child, args=(result,))
    child.start()
    child.join(20)
    assert child.exitcode == 0
    assert result.get() is False
    assert result.get() == ("test-worker", 2)
    # Nothing of the child's reached the parent's thread.
    assert served.empty()
