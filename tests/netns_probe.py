"""What a process on the second host can reach: run there by tests/test_netns.py.

``python -m tests.netns_probe CHECK...`` prints one JSON object, a result per check:
``"ok"`` or how it failed (``"timeout"``, ``"refused"``, ``"unreachable"``, or the
error). The addresses are the environment's, as an application process reads them
(REDIS_URL, DATABASE_URL through Django's settings, S3_*).

- ``redis``: PING at REDIS_URL, 2 s timeouts, no retries.
- ``loopback``: a TCP connection to 127.0.0.1 at PROBE_LOOPBACK_PORT (6379).
- ``database``: ``SELECT 1`` on Django's default database; also its vendor and host.
- ``s3``: PUT, GET and DELETE of an object with the S3_* credentials.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import uuid
from collections.abc import Callable
from typing import Any


def _outcome(check: Callable[[], Any]) -> Any:
    try:
        return check()
    except Exception as exc:
        return _failure(exc)


def _failure(exc: BaseException) -> str:
    import redis

    if isinstance(exc, TimeoutError | socket.timeout | redis.exceptions.TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, OSError) and exc.errno in (
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    ):
        return "unreachable"
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        inner = _failure(cause)
        if inner in ("timeout", "refused", "unreachable"):
            return inner
    text = f"{type(exc).__name__}: {exc}"
    if "Connection refused" in text:
        return "refused"
    if "timed out" in text.lower() or "Timeout" in text:
        return "timeout"
    return text


def _redis() -> str:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(
        os.environ["REDIS_URL"],
        socket_timeout=2,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )
    return "ok" if client.ping() else "no PONG"


def _loopback() -> str:
    port = int(os.environ.get("PROBE_LOOPBACK_PORT", "6379"))
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return "ok"


def _database() -> dict[str, str]:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    return {
        "result": "ok",
        "vendor": connection.vendor,
        "host": str(connection.settings_dict.get("HOST") or ""),
    }


def _s3() -> str:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=os.environ["S3_ENDPOINT_URL"],
        aws_access_key_id=os.environ["S3_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["S3_SECRET_ACCESS_KEY"],
        region_name=os.environ["S3_REGION"],
        config=Config(
            s3={"addressing_style": os.environ["S3_ADDRESSING_STYLE"]},
            connect_timeout=2,
            read_timeout=5,
            retries={"max_attempts": 1},
        ),
    )
    bucket = os.environ["S3_BUCKET"]
    key = f"netns-probe/{uuid.uuid4().hex}"
    body = os.urandom(64 * 1024)
    client.put_object(Bucket=bucket, Key=key, Body=body)
    same = client.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    client.delete_object(Bucket=bucket, Key=key)
    return "ok" if same else "GET returned other bytes"


_CHECKS: dict[str, Callable[[], Any]] = {
    "redis": _redis,
    "loopback": _loopback,
    "database": _database,
    "s3": _s3,
}


def main(names: list[str]) -> None:
    print(json.dumps({name: _outcome(_CHECKS[name]) for name in names}))


if __name__ == "__main__":
    main(sys.argv[1:])
