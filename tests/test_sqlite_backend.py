"""SQLite as settings.py configures it (Django's own backend, IMMEDIATE transactions,
WAL, a busy timeout): writers wait for a lock held elsewhere, a write that waits past
the timeout fails with Django's OperationalError, and a transaction however it ends
(commit, rollback, a closed connection) leaves the next writer free to write."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError
from django.db.utils import ConnectionHandler


@pytest.fixture(autouse=True)
def _own_database(django_db_blocker: Any) -> Iterator[None]:
    # Its own SQLite file, whatever DATABASE_URL the suite runs with: not the test
    # database that pytest-django guards.
    with django_db_blocker.unblock():
        yield


def _handler(path: Path, timeout: float = 10.0) -> ConnectionHandler:
    handler = ConnectionHandler(
        {
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(path),
                "OPTIONS": {
                    "timeout": timeout,
                    "transaction_mode": "IMMEDIATE",
                    "init_command": "PRAGMA journal_mode=WAL;",
                },
            }
        }
    )
    with _write(handler) as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS t (v TEXT)")
    return handler


@contextlib.contextmanager
def _write(handler: ConnectionHandler) -> Iterator[Any]:
    """What transaction.atomic() does with this thread's connection."""
    conn = handler["default"]
    conn.set_autocommit(False, force_begin_transaction_with_broken_autocommit=True)
    try:
        yield conn.cursor()
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.set_autocommit(True)


def _in_thread(target: Callable[[], None], timeout: float = 20) -> None:
    """Run ``target`` in another thread; fail (rather than hang) if it does not end."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "a writer never got its turn"
    if errors:
        raise errors[0]


@contextlib.contextmanager
def _held_elsewhere(path: Path) -> Iterator[None]:
    """SQLite's write lock held by another connection (another process, for it)."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("COMMIT")
        other.close()


def _count(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]


def test_writers_wait_for_a_lock_held_elsewhere_then_all_commit(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    handler = _handler(path)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(20):
                with _write(handler) as cursor:
                    cursor.execute("INSERT INTO t VALUES (%s)", [f"{n}-{i}"])
        except BaseException as exc:
            errors.append(exc)
        finally:
            handler.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    with _held_elsewhere(path):
        for thread in threads:
            thread.start()
        threading.Event().wait(0.3)
        assert _count(path) == 0
    for thread in threads:
        thread.join(30)
    assert not errors
    assert _count(path) == 120


def test_past_the_busy_timeout_a_write_fails_and_the_next_one_still_writes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite3"
    handler = _handler(path, timeout=0.3)

    def blocked() -> None:
        with pytest.raises(OperationalError, match="locked"), _write(handler) as cursor:
            cursor.execute("INSERT INTO t VALUES ('never')")

    def writes() -> None:
        with _write(handler) as cursor:
            cursor.execute("INSERT INTO t VALUES ('later')")
        handler.close_all()

    with _held_elsewhere(path):
        _in_thread(blocked)
    _in_thread(writes)
    assert _count(path) == 1


def test_the_lock_is_freed_by_a_rollback_and_by_a_closed_connection(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite3"
    handler = _handler(path)

    def rolled_back() -> None:
        with pytest.raises(ZeroDivisionError), _write(handler) as cursor:
            cursor.execute("INSERT INTO t VALUES ('rolled back')")
            1 / 0
        # The connection stays open: the rollback alone must free the lock.

    def closed_mid_transaction() -> None:
        conn = handler["default"]
        conn.set_autocommit(False, force_begin_transaction_with_broken_autocommit=True)
        conn.cursor().execute("INSERT INTO t VALUES ('lost')")
        conn.close()

    def writes() -> None:
        with _write(handler) as cursor:
            cursor.execute("INSERT INTO t VALUES ('kept')")
        handler.close_all()

    _in_thread(rolled_back)
    _in_thread(writes)
    _in_thread(closed_mid_transaction)
    _in_thread(writes)
    assert _count(path) == 2


def test_a_writer_waiting_past_the_timeout_behind_another_thread_gets_djangos_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite3"
    handler = _handler(path, timeout=0.3)
    holding = threading.Event()
    done = threading.Event()

    def holds_the_lock() -> None:
        with _write(handler) as cursor:
            cursor.execute("INSERT INTO t VALUES ('first')")
            holding.set()
            done.wait(20)
        handler.close_all()

    holder = threading.Thread(target=holds_the_lock)
    holder.start()
    try:
        assert holding.wait(20)

        def waits() -> None:
            # django.db.OperationalError (callers that retry on a locked database,
            # such as the webhook's writer, catch that), as for another process.
            with pytest.raises(OperationalError, match="locked"), _write(handler):
                pass

        _in_thread(waits)
    finally:
        done.set()
        holder.join(20)
    assert _count(path) == 1
