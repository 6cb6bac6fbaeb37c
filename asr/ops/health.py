"""Readiness: can this process serve requests that need the database, Redis and the
audio store?"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DEFAULT_DB_ALIAS
from django.db import connections
from django.db.migrations.executor import MigrationExecutor

from asr import storage
from asr.ops import redis_state

logger = logging.getLogger(__name__)

# Once every migration is applied it stays so for this process's code; the check
# (which loads the migration graph) is not repeated on every probe.
_migrations_seen_applied = False


def _database() -> dict[str, Any]:
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"ok": True}


def _migrations() -> dict[str, Any]:
    global _migrations_seen_applied
    if _migrations_seen_applied:
        return {"ok": True}
    connection = connections[DEFAULT_DB_ALIAS]
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if plan:
        pending = [f"{m.app_label}.{m.name}" for m, _ in plan]
        return {
            "ok": False,
            "error": f"{len(pending)} migration(s) not applied: run "
            "`manage.py migrate`",
            "pending": pending[:20],
        }
    _migrations_seen_applied = True
    return {"ok": True}


def _redis() -> dict[str, Any]:
    redis_state.client().ping()
    return {"ok": True}


def _storage() -> dict[str, Any]:
    storage.store_check()
    return {"ok": True}


CHECKS = {
    "database": _database,
    "migrations": _migrations,
    "redis": _redis,
    "storage": _storage,
}


def readiness() -> tuple[bool, dict[str, Any]]:
    """(ready, report): each check's outcome, with what is wrong where it failed."""
    report: dict[str, Any] = {}
    for name, check in CHECKS.items():
        if name == "migrations" and not report["database"]["ok"]:
            report[name] = {"ok": False, "error": "database unreachable"}
            continue
        try:
            report[name] = check()
        except Exception as exc:
            logger.warning("readiness: %s failed: %s", name, exc)
            report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    ready = all(item["ok"] for item in report.values())
    return ready, {"status": "ok" if ready else "unavailable", "checks": report}
