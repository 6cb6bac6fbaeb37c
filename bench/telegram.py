"""Benchmark of the Telegram bot path: real uvicorn, a real Celery worker, real Redis,
and the test suite's fake Bot API (tests/bots/fake_bot_api.py) over HTTP.

Run from the project root with the virtualenv:

    .venv/bin/python bench/telegram.py              # full run, about 3 minutes
    .venv/bin/python bench/telegram.py --quick      # about 1 minute
    .venv/bin/python bench/telegram.py --web-workers 1

Figures:
  floor    the same bursts against uvicorn serving an app that does nothing: what
           this machine allows at all, before any of our code runs.
  webhook  POST /bots/telegram/webhook/ answer latency (p50, p90, p99, max): one
           update at a time; bursts of 200 updates sent at the same moment on 200 open
           connections (with the web process's CPU per update); Telegram's own pattern
           (40 connections, each sending as soon as it has its answer:
           TELEGRAM_WEBHOOK_MAX_CONNECTIONS' default). No worker runs meanwhile: the
           figures are the web process's. Then the same 200 updates three times (one
           row each) and a count of rows against updates answered 200.
           The webhook is served by bots/webhook/app.py, an ASGI application that
           kikipounamu/asgi.py routes ahead of Django's HTTP handler (whose request
           machinery alone costs ~2 ms of CPU per request: 200 at once cannot be
           answered in 50 ms on two cores through it); it answers 200 once the
           update's row is committed, by one writer thread per process that commits
           everything waiting in one transaction (group commit). Issue 5's target:
           bursts of 200 at p99 <= 50 ms on two cores. Compare with the floor line,
           and read the load average: others' work on the machine shows in both.
  e2e      update -> acknowledgement sent -> acknowledgement edited into the transcript,
           with the whisper engine on short espeak-ng voice notes (OGG/Opus), one at a
           time and then all at once; workers as the Procfile runs them (asr, default,
           and bots on threads).

It isolates itself as a test run does (tests/settings.py): a run id of its own, so a
Redis key prefix (the broker's global_keyprefix) no other process uses, and a fresh
SQLite file and media folder under var/bench-telegram/<run>/. Everything under the
prefix and the run folder is removed at the end, also on Ctrl-C; the processes' logs
stay in var/bench-telegram/logs/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path, and this file's name
# would then hide the python-telegram-bot package that the bot imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
BENCH_DIR = ROOT / "var" / "bench-telegram"
LOG_DIR = BENCH_DIR / "logs"
RUN_ID = f"tgbench-{uuid.uuid4().hex[:6]}"
RUN_DIR = BENCH_DIR / RUN_ID
SECRET = "bench-secret"
WEBHOOK = "/bots/telegram/webhook/"
SENTENCES = [
    "Please call me back when you get this.",
    "The meeting moved to three o'clock.",
    "I am on the train and will be late.",
    "Can you buy some bread on the way home?",
    "The report is ready for your review.",
    "Let us have lunch together on Friday.",
    "The parcel arrived this morning.",
    "Remember to water the plants.",
    "We need two more chairs for the party.",
    "Thank you for your help yesterday.",
]
FULL = {"bursts": 10, "telegram_updates": 2000, "voice_notes": 10, "burst_notes": 10}
QUICK = {"bursts": 3, "telegram_updates": 600, "voice_notes": 4, "burst_notes": 4}


# Environment ---------------------------------------------------------------------------


def configure_environment() -> None:
    """Settings for this process and every child (they inherit os.environ)."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "KIKI_TEST_RUN": RUN_ID,
            # Every process opens the run's own database file, not a test copy.
            "KIKI_TEST_SUBPROCESS": "1",
            "DATABASE_TEST_NAME": str(RUN_DIR / "db.sqlite3"),
            "MEDIA_ROOT": str(RUN_DIR / "media"),
            "TELEGRAM_WEBHOOK_SECRET": SECRET,
        }
    )
    # SQLite only: a shared PostgreSQL would need a database created per run.
    os.environ.pop("DATABASE_URL", None)
    sys.path.insert(0, str(ROOT))


def setup_django() -> None:
    import django

    django.setup()
    from kikipounamu import local

    local.prepare()  # var/, the secret key, the embedded Redis
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def remove_run() -> None:
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(match=f"{settings.REDIS_KEY_PREFIX}*", count=1000):
        client.delete(key)
    shutil.rmtree(RUN_DIR, ignore_errors=True)


def purge_queues() -> None:
    """Drop the messages the webhook phase left (nobody consumed them)."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(match=f"{settings.REDIS_KEY_PREFIX}*", count=1000):
        if client.type(key) == b"list":
            client.delete(key)


# Processes -----------------------------------------------------------------------------


class Process:
    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.log_path = LOG_DIR / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited:\n{self.log()[-3000:]}")

    def cpu_seconds(self) -> float:
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.popen.pid:
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._log.close()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_web(workers: int, env: dict[str, str]) -> tuple[Process, str]:
    import httpx

    from bench.pipeline import uvicorn_command

    port = free_port()
    proc = Process(
        f"web-{RUN_ID}",
        uvicorn_command(port=port, workers=workers),
        # A log line per request would cost the server CPU that we are measuring.
        {"LOG_LEVEL": "WARNING", **env},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while proc.log().count("Started server process") < workers:
        proc.check()
        if time.monotonic() > deadline:
            raise TimeoutError(proc.log()[-3000:])
        time.sleep(0.1)
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        proc.check()
        if time.monotonic() > deadline:
            raise TimeoutError(proc.log()[-3000:])
        time.sleep(0.1)


def start_worker(
    env: dict[str, str], queues: str, concurrency: int, pool: str = "prefork"
) -> Process:
    proc = Process(
        f"worker-{queues.replace(',', '-')}-{RUN_ID}",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "kikipounamu",
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency),
            "-P",
            pool,
            "-n",
            f"bench-{queues}-{RUN_ID}@%h",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "info",
        ],
        env,
    )
    deadline = time.monotonic() + 120
    while " ready." not in proc.log():
        proc.check()
        if time.monotonic() > deadline:
            raise TimeoutError(proc.log()[-3000:])
        time.sleep(0.1)
    # The model loads in each pool process after "ready": wait for all of them.
    while (
        "asr" in queues.split(",") and proc.log().count("whisper model") < concurrency
    ):
        proc.check()
        if time.monotonic() > deadline:
            raise TimeoutError(proc.log()[-3000:])
        time.sleep(0.1)
    return proc


# Updates and HTTP ---------------------------------------------------------------------


def voice_update(update_id: int, chat_id: int, file_id: str, size: int) -> dict:
    from tests.bots import updates as u

    body = u.update(
        u.message(
            u.private_chat(chat_id),
            message_id=update_id % 1_000_000,
            voice=u.voice(file_id, f"u{update_id}", size=size),
        )
    )
    body["update_id"] = update_id
    return body


def raw_post(host: str, body: dict) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST {WEBHOOK} HTTP/1.1\r\nHost: {host}\r\n"
        f"X-Telegram-Bot-Api-Secret-Token: {SECRET}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


class Connection:
    """A keep-alive HTTP/1.1 connection sending prepared requests: it costs a
    fraction of a millisecond of CPU per request, so on two shared cores the figures
    stay the server's rather than the load generator's (httpx costs ~10x that)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, raw: bytes) -> int:
        if self.writer is None or self.reader is None:
            await self.open()
        assert self.writer is not None and self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return int(lines[0].split(" ", 2)[1])

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def percentiles(values: list[float]) -> str:
    if not values:
        return "no data"
    ms = sorted(v * 1000 for v in values)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, round(p / 100 * (len(ms) - 1)))]

    return (
        f"p50 {pct(50):7.1f} ms  p90 {pct(90):7.1f} ms  p99 {pct(99):7.1f} ms  "
        f"max {ms[-1]:7.1f} ms  (n={len(ms)})"
    )


async def _bursts(
    base: str, bodies: list[list[dict]], concurrency: int
) -> tuple[list[float], list[str]]:
    """Each burst: ``concurrency`` requests released at the same moment, one per
    already open connection."""
    host, port = base.removeprefix("http://").split(":")
    conns = [Connection(host, int(port)) for _ in range(concurrency)]
    await asyncio.gather(*(c.open() for c in conns))
    latencies: list[float] = []
    failures: list[str] = []

    async def one(conn: Connection, raw: bytes) -> None:
        started = time.perf_counter()
        try:
            status = await asyncio.wait_for(conn.request(raw), 60)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            await conn.close()
            return
        if status == 200:
            latencies.append(time.perf_counter() - started)
        else:
            failures.append(f"HTTP {status}")

    for burst in bodies:
        raws = [raw_post(f"{host}:{port}", b) for b in burst]
        await asyncio.gather(*(one(c, r) for c, r in zip(conns, raws, strict=True)))
        await asyncio.sleep(0.5)  # let the server settle: bursts, not a flood
    await asyncio.gather(*(c.close() for c in conns))
    return latencies, failures


async def _closed_loop(
    base: str, bodies: list[dict], connections: int
) -> tuple[list[float], list[str], float]:
    host, port = base.removeprefix("http://").split(":")
    raws = [raw_post(f"{host}:{port}", b) for b in bodies]
    latencies: list[float] = []
    failures: list[str] = []

    async def client(n: int) -> None:
        conn = Connection(host, int(port))
        for raw in raws[n::connections]:
            started = time.perf_counter()
            try:
                status = await asyncio.wait_for(conn.request(raw), 60)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                await conn.close()
                continue
            if status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                failures.append(f"HTTP {status}")
        await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(connections)))
    return latencies, failures, time.perf_counter() - t0


def run_measured(coro: Any) -> Any:
    """``asyncio.run`` with this process's cyclic garbage collector off. With Django
    loaded, a full collection here takes 45-60 ms (measured with ``gc.callbacks``);
    one that fell inside a burst stalled the load generator's loop and showed as
    the server's latency, in the floor's figures as much as the webhook's."""
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(coro)
    finally:
        gc.enable()


# Phases --------------------------------------------------------------------------------


def machine_busy() -> str:
    load1, load5, _ = os.getloadavg()
    return f"load average {load1:.1f} (1 min), {load5:.1f} (5 min) on {os.cpu_count()} cores"


FLOOR_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})
"""


def phase_floor(cfg: dict, web_workers: int) -> None:
    """The same bursts against uvicorn with an app that does nothing: what the
    machine allows at all, before any code of ours runs."""
    (RUN_DIR / "floor_app.py").write_text(FLOOR_APP)
    port = free_port()
    proc = Process(
        f"floor-{RUN_ID}",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "floor_app:app",
            "--app-dir",
            str(RUN_DIR),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(web_workers),
            "--no-access-log",
        ],
        {},
    )
    try:
        deadline = time.monotonic() + 60
        while proc.log().count("Started server process") < web_workers:
            proc.check()
            if time.monotonic() > deadline:
                raise TimeoutError(proc.log()[-3000:])
            time.sleep(0.1)
        base = f"http://127.0.0.1:{port}"
        body = voice_update(1, 1, "unused", 4000)
        run_measured(_bursts(base, [[body] * 200], 200))
        cpu0 = proc.cpu_seconds()
        latencies, _ = run_measured(
            _bursts(base, [[body] * 200 for _ in range(cfg["bursts"])], 200)
        )
        cpu = proc.cpu_seconds() - cpu0
        print(
            f"floor: uvicorn ({web_workers} worker(s)) with an app that does nothing, "
            "same bursts of 200:"
        )
        print(f"  {percentiles(latencies)}")
        print(
            f"  web CPU {cpu / (cfg['bursts'] * 200) * 1000:.2f} ms per request; "
            f"{machine_busy()}"
        )
    finally:
        proc.stop()


def phase_webhook(fake: Any, cfg: dict, web_workers: int) -> None:
    from bots.models import TelegramUpdate

    env = {
        "TELEGRAM_BOT_TOKEN": fake.token,
        "TELEGRAM_API_BASE_URL": fake.url,
    }
    web, base = start_web(web_workers, env)
    try:
        file_id, _ = fake.add_file(b"unused in this phase")
        next_id = iter(range(1, 10**9))

        def bodies(n: int) -> list[dict]:
            return [
                voice_update(i, 10_000 + i % 997, file_id, 4000)
                for i in (next(next_id) for _ in range(n))
            ]

        # Warm-up (imports, connection pools, SQLite pages), not measured.
        run_measured(_bursts(base, [bodies(200)], 200))
        latencies, failures, _ = run_measured(_closed_loop(base, bodies(200), 1))
        print("webhook, one update at a time (1 connection):")
        print(f"  {percentiles(latencies)}")
        cpu0 = web.cpu_seconds()
        latencies, failures = run_measured(
            _bursts(base, [bodies(200) for _ in range(cfg["bursts"])], 200)
        )
        cpu = web.cpu_seconds() - cpu0
        n = cfg["bursts"] * 200
        print(
            f"webhook, bursts of 200 updates at once ({cfg['bursts']} bursts, "
            f"{web_workers} uvicorn worker(s)):"
        )
        print(f"  {percentiles(latencies)}")
        print(f"  web CPU {cpu / n * 1000:.2f} ms per update; {machine_busy()}")
        if failures:
            print(f"  FAILURES: {len(failures)}, e.g. {failures[:3]}")

        latencies, failures, wall = run_measured(
            _closed_loop(base, bodies(cfg["telegram_updates"]), 40)
        )
        print(
            f"webhook, Telegram's pattern (40 connections, {cfg['telegram_updates']} "
            f"updates, each connection sending as soon as it has its answer):"
        )
        print(f"  {percentiles(latencies)}; {len(latencies) / wall:.0f} updates/s")
        if failures:
            print(f"  FAILURES: {len(failures)}, e.g. {failures[:3]}")

        # Telegram delivers again what it did not see answered: same ids, no rows.
        repeat = bodies(200)
        run_measured(_bursts(base, [repeat, repeat, repeat], 200))
        stored = TelegramUpdate.objects.filter(
            update_id__in=[b["update_id"] for b in repeat]
        ).count()
        print(f"  the same 200 updates sent 3 times: {stored} stored (expected 200)")
        answered = TelegramUpdate.objects.count()
        print(
            f"  every update answered 200 is stored: {answered} rows for "
            f"{next(next_id) - 1} distinct updates sent"
        )
    finally:
        web.stop()
        purge_queues()


def phase_e2e(fake: Any, cfg: dict, web_workers: int, tmp: Path) -> None:
    from bots.models import TelegramJob
    from tests.bots import media

    env = {"TELEGRAM_BOT_TOKEN": fake.token, "TELEGRAM_API_BASE_URL": fake.url}
    web, base = start_web(web_workers, env)
    host, port = base.removeprefix("http://").split(":")
    workers: list[Process] = []
    try:
        # As the Procfile runs them: inference apart, so that a long transcription
        # never holds up an acknowledgement or a reply.
        workers.append(
            start_worker({**env, "ASR_ENGINE": "whisper"}, "asr", concurrency=1)
        )
        workers.append(start_worker(env, "default", concurrency=1))
        workers.append(start_worker(env, "bots", concurrency=16, pool="threads"))
        notes = []
        for i, sentence in enumerate(SENTENCES[: max(cfg["voice_notes"], 1)]):
            directory = tmp / f"n{i}"
            directory.mkdir()
            path = media.voice_note(
                media.speech(sentence, directory), tmp / f"n{i}.ogg"
            )
            file_id, _ = fake.add_file(path.read_bytes())
            notes.append((sentence, file_id, path.stat().st_size))

        def send(chat_id: int, update_id: int, note: tuple) -> float:
            body = voice_update(update_id, chat_id, note[1], note[2])
            conn = Connection(host, int(port))
            started = time.monotonic()
            status = asyncio.run(conn.request(raw_post(f"{host}:{port}", body)))
            assert status == 200, status
            return started

        def wait_final(chat_id: int, timeout: float = 180) -> tuple[float, float]:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                sends = fake.calls_for(chat_id, "sendMessage")
                edits = [c for c in fake.calls_for(chat_id, "editMessageText") if c.ok]
                if sends and edits:
                    return sends[0].at, edits[-1].at
                for worker in workers:
                    worker.check()
                time.sleep(0.01)
            raise TimeoutError(f"chat {chat_id}: no final edit in {timeout}s")

        def run(label: str, notes_: list, at_once: bool, base_id: int) -> None:
            starts, chats = [], []
            for n, note in enumerate(notes_):
                chat_id = base_id + n
                chats.append(chat_id)
                starts.append(send(chat_id, base_id + n, note))
                if not at_once:
                    wait_final(chat_id)
            ack, final, audio, engine = [], [], [], []
            for chat_id, started in zip(chats, starts, strict=True):
                acked, edited = wait_final(chat_id)
                ack.append(acked - started)
                final.append(edited - started)
                job = TelegramJob.objects.select_related("transcription").get(
                    chat_id=chat_id
                )
                t = job.transcription
                assert t is not None and t.status == "succeeded", t
                audio.append(t.duration or 0)
                engine.append(t.engine_seconds or 0)
                messages = fake.messages(chat_id)
                assert len(messages) == 1 and messages[0].edits == 1, messages
            print(f"update -> final edit, whisper, {label}:")
            print(f"  update -> ack sent     {percentiles(ack)}")
            print(f"  update -> final edit   {percentiles(final)}")
            print(
                f"  audio {statistics.mean(audio):.1f} s per note on average; "
                f"engine {statistics.mean(engine) * 1000:.0f} ms per note; "
                "one message per note, edited once"
            )

        run(f"{len(notes)} notes one at a time", notes, False, 500_000)
        burst = (notes * 10)[: cfg["burst_notes"]]
        run(f"{len(burst)} notes at once", burst, True, 600_000)
        print(f"  {machine_busy()}")
    finally:
        for worker in workers:
            worker.stop()
        web.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--only", choices=["webhook", "e2e"])
    args = parser.parse_args()
    cfg = QUICK if args.quick else FULL

    configure_environment()
    setup_django()
    from tests.bots.fake_bot_api import FakeBotApi

    fake = FakeBotApi().start()
    os.environ["TELEGRAM_BOT_TOKEN"] = fake.token
    os.environ["TELEGRAM_API_BASE_URL"] = fake.url
    print(f"run {RUN_ID}: {machine_busy()}")
    try:
        if args.only in (None, "webhook"):
            phase_floor(cfg, args.web_workers)
            phase_webhook(fake, cfg, args.web_workers)
        if args.only in (None, "e2e"):
            phase_e2e(fake, cfg, args.web_workers, RUN_DIR)
    finally:
        fake.stop()
        remove_run()


if __name__ == "__main__":
    # Ctrl-C reaches only this process (the children have sessions of their own):
    # the finally blocks stop them and remove the run's data.
    main()
