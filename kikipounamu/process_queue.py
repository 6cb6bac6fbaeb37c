"""A queue served by one daemon thread of the process that uses it.

The webhook's writer and publisher (bots/webhook/writer.py, bots/webhook/publisher.py)
each hand work from request handlers to a thread of their own. Such a module is
imported before the server forks its workers (or a Celery pool its processes); a
forked child inherits the queue object but not the thread. So the thread starts on first use in
each process, with a fresh queue: nothing the parent had queued is served twice.
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
from collections.abc import Callable
from typing import Generic
from typing import TypeVar

T = TypeVar("T")


class ProcessQueue(Generic[T]):
    def __init__(
        self,
        name: str,
        serve: Callable[[], None],
        *,
        at_exit: Callable[[], None] | None = None,
    ) -> None:
        """``serve`` runs in the thread (for ever, taking from ``get``); ``at_exit``,
        if given, runs at the process's clean exit."""
        self.name = name
        self._serve = serve
        self._at_exit = at_exit
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[T] = queue.SimpleQueue()
        self._owner_pid: int | None = None

    @property
    def started(self) -> bool:
        """Whether this process's thread runs (something was put here)."""
        return self._owner_pid == os.getpid()

    def put(self, item: T) -> None:
        if not self.started:
            self._start()
        self._queue.put(item)

    def get(self) -> T:
        return self._queue.get()

    def get_nowait(self) -> T:
        """Raises ``queue.Empty`` when nothing waits."""
        return self._queue.get_nowait()

    def _start(self) -> None:
        with self._lock:
            if self.started:
                return
            self._queue = queue.SimpleQueue()
            threading.Thread(target=self._serve, name=self.name, daemon=True).start()
            self._owner_pid = os.getpid()
            if self._at_exit is not None:
                atexit.register(self._at_exit)
