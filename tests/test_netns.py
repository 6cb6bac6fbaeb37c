"""The second host (tests/netns.py): a process in it reaches the broker, the database
and the object store over its link only, loses them when the link is cut, gets them
back when it is restored, and leaves nothing behind."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests import netns
from tests.processes import subprocess_env
from tests.s3_server import S3Server

NAMESPACE = {"KIKI_TEST_NAMESPACE": "-netns"}


def _probe(host: netns.SecondHost, env: dict[str, str], *checks: str) -> dict[str, Any]:
    """Run tests/netns_probe.py on the second host with ``env`` over the test env."""
    out = host.run(
        [sys.executable, "-m", "tests.netns_probe", *checks],
        env=subprocess_env(**env),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _netns_list() -> str:
    return subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout


def test_the_second_host_reaches_broker_database_and_store_over_its_link(
    second_host: netns.SecondHost, s3_server: S3Server, transactional_db: Any
) -> None:
    # given a port that only this machine's loopback serves
    with socket.socket() as local:
        local.bind(("127.0.0.1", 0))
        local.listen()
        env = second_host.worker_env(s3=s3_server)
        env["PROBE_LOOPBACK_PORT"] = str(local.getsockname()[1])

        # when a process on the second host tries everything
        seen = _probe(second_host, env, "redis", "database", "s3", "loopback")

    # then what it reached, it reached through this machine's end of the link
    link = f"{second_host.host_ip}:"
    assert link in env["REDIS_URL"] and link in env["S3_ENDPOINT_URL"]
    assert seen["redis"] == "ok"
    assert seen["s3"] == "ok"
    assert isinstance(seen["database"], dict), seen["database"]
    assert seen["database"]["result"] == "ok"
    if seen["database"]["vendor"] == "sqlite":
        assert "DATABASE_URL" not in env  # a shared file: nothing to forward
    else:
        assert seen["database"]["host"] == second_host.host_ip
        assert link in env["DATABASE_URL"]
    # and this machine's loopback is not its loopback
    assert seen["loopback"] == "refused"


def test_a_cut_link_times_the_broker_out_and_a_restored_one_brings_it_back(
    second_host: netns.SecondHost,
) -> None:
    env = {"REDIS_URL": second_host.forward_redis(settings.REDIS_URL)}
    assert _probe(second_host, env, "redis") == {"redis": "ok"}

    with second_host.link_cut():
        cut = _probe(second_host, env, "redis")["redis"]
        # A pulled cable drops packets: no refusal, no reset, just silence.
        assert cut in ("timeout", "unreachable"), cut

    assert _probe(second_host, env, "redis") == {"redis": "ok"}


def test_a_worker_on_the_second_host_joins_the_broker_over_the_link(
    second_host: netns.SecondHost, transactional_db: Any, tmp_path: Path
) -> None:
    worker = second_host.start_worker(
        media_root=tmp_path / "media", ASR_ENGINE="synthetic", **NAMESPACE
    )
    try:
        identify = subprocess.run(
            ["ip", "netns", "identify", str(worker.popen.pid)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert identify.stdout.strip() == second_host.name
        # kombu masks the (empty) password: redis://:**@HOST:PORT/DB
        broker = re.search(r"Connected to redis://\S*@([0-9.]+):", worker.log())
        assert broker is not None and broker.group(1) == second_host.host_ip
    finally:
        worker.stop()


def test_cleanup_removes_namespace_link_and_processes_when_a_test_fails() -> None:
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(f"no second host: {reason}")
    # the namespace goes first, then pytest.raises catches what the test raised
    with (
        pytest.raises(RuntimeError, match="the test failed"),
        netns.second_host() as host,
    ):
        host.forward_redis(settings.REDIS_URL)
        forwarders = list(host.forwarders)
        sleeper = subprocess.Popen([*host.exec_prefix, "sleep", "600"])
        deadline = time.monotonic() + 10
        while sleeper.pid not in host.pids() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert host.name in _netns_list() and sleeper.pid in host.pids()
        raise RuntimeError("the test failed")

    assert host.name not in _netns_list()
    link = subprocess.run(
        ["ip", "link", "show", host.host_veth], capture_output=True, text=True
    )
    assert link.returncode != 0 and "does not exist" in link.stderr
    assert sleeper.wait(10) is not None
    assert forwarders and all(proc.popen.poll() is not None for proc in forwarders)
