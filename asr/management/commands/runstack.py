"""Run the whole system on one machine: what `make run` does after installing.

Migrates, makes sure the admin and its API token exist, starts every process of the
Procfile through honcho (web, workers, beat, Flower) against the project's own Redis
unless REDIS_URL is set, transcribes the sample clip through the REST API, prints the
transcript and where to look next, and on Ctrl-C stops everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.core.management.base import CommandError

from asr.management.commands.ensure_admin import ensure_admin
from kikipounamu import local
from kikipounamu.redis_server import EmbeddedRedis
from kikipounamu.redis_server import stop_embedded_redis

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "welcome.ogg"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class Command(BaseCommand):
    redis: EmbeddedRedis | None = None
    help = (
        "Start web, workers, beat and Flower (the Procfile), then transcribe a sample."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--sample", type=Path, default=SAMPLE)
        parser.add_argument("--no-sample", action="store_true")
        parser.add_argument(
            "--procfile", type=Path, default=settings.BASE_DIR / "Procfile"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # Ctrl-C and a plain `kill` both stop everything in order, even where the
        # shell started us with SIGINT ignored (a background job).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _interrupt)
        # The project's own Redis unless REDIS_URL is set; stopped at the end if
        # this command started it.
        self.redis = local.prepare()
        call_command("migrate", verbosity=0, interactive=False)
        user, password, token = ensure_admin()

        host = os.environ.get("WEB_HOST", "127.0.0.1")
        port = os.environ.get("WEB_PORT", "8000")
        base = f"http://{host}:{port}"
        env = dict(os.environ)
        env["REDIS_URL"] = settings.REDIS_URL
        env["WEB_HOST"], env["WEB_PORT"] = host, port
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")

        self.stdout.write(
            f"redis: {settings.REDIS_URL}   database: {settings.DATABASES['default']['NAME']}"
        )
        self.stdout.write(
            f"engine: {settings.ASR_ENGINE}   starting {options['procfile'].name} ..."
        )
        # Its own session: Ctrl-C reaches us once, and we stop honcho (and through it
        # every process) in order, rather than every process at once.
        honcho = subprocess.Popen(
            [
                str(Path(bin_dir) / "honcho"),
                "start",
                "-f",
                str(options["procfile"]),
                "-d",
                str(settings.BASE_DIR),
            ],
            env=env,
            start_new_session=True,
        )
        try:
            self._wait_for_web(base, honcho)
            if not options["no_sample"]:
                self._transcribe_sample(base, token, options["sample"])
            self._where_next(base, user.get_username(), password, token)
            honcho.wait()
            raise CommandError(
                "a process of the Procfile stopped; see its output above"
            )
        except KeyboardInterrupt:
            self.stdout.write("\nstopping ...")
        finally:
            self._stop(honcho)

    def _wait_for_web(self, base: str, honcho: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if honcho.poll() is not None:
                raise CommandError(
                    "the processes did not start; see their output above"
                )
            try:
                if requests.get(f"{base}/healthz", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise CommandError(f"the web server did not answer at {base} within 120 s")

    def _transcribe_sample(self, base: str, token: str, sample: Path) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token}"
        with sample.open("rb") as fh:
            response = session.post(
                f"{base}/api/v1/transcriptions",
                files={"file": (sample.name, fh)},
                timeout=30,
            )
        if response.status_code != 202:
            raise CommandError(
                f"the API refused the sample: {response.status_code} {response.text}"
            )
        job = response.json()
        self.stdout.write(f"\nsubmitted {sample.name} through the API: job {job['id']}")
        deadline = time.monotonic() + 300
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            if time.monotonic() > deadline:
                raise CommandError("the sample was not transcribed within 5 minutes")
            time.sleep(0.3)
            job = session.get(job["links"]["self"], timeout=10).json()
        if job["status"] != "succeeded":
            raise CommandError(f"the sample job {job['status']}: {job['error']}")
        self.stdout.write(
            f"transcript ({job['duration']:.1f} s of audio, {job['engine']}/{job['model']}, "
            f"real-time factor {job['real_time_factor']:.2f}):\n"
        )
        for segment in job["segments"]:
            self.stdout.write(
                f"  [{segment['start']:6.2f} -> {segment['end']:6.2f}] {segment['text']}"
            )

    def _where_next(
        self, base: str, username: str, password: str | None, token: str
    ) -> None:
        password_hint = password or f"see {settings.VAR_DIR / 'admin-password'}"
        flower = os.environ.get("FLOWER_PORT", "5555")
        self.stdout.write(
            f"""
Everything is running. Where to look next:
  API docs (Swagger UI)  {base}/api/docs/
  admin                  {base}/admin/   user {username}, password {password_hint}
  Flower                 http://127.0.0.1:{flower}/
  ops dashboard          {base}/ops/   metrics {base}/metrics   ready {base}/readyz
  API token              {token}
  try                    curl -H "Authorization: Token {token}" -F file=@your.mp3 {base}/api/v1/transcriptions
  or                     .venv/bin/python manage.py transcribe your.mp3 --wait --format srt
Press Ctrl-C to stop every process.
"""
        )

    def _stop(self, honcho: subprocess.Popen[bytes]) -> None:
        if honcho.poll() is None:
            honcho.send_signal(signal.SIGTERM)
            try:
                honcho.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(honcho.pid, signal.SIGKILL)
                honcho.wait()
        if self.redis is not None and self.redis.started:
            stop_embedded_redis(self.redis.data_dir)
            self.stdout.write("embedded redis stopped")
        self.stdout.write("all processes stopped")
