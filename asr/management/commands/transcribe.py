"""Submit local audio files through the same pipeline as the API, and optionally wait.

python manage.py transcribe talk.mp3 interview.wav --wait --format srt -o out/
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.files import File
from django.core.management.base import BaseCommand
from django.core.management.base import CommandError
from tqdm import tqdm

from asr import services
from asr.formats import FORMATS
from asr.formats import render
from asr.models import Transcription
from kikipounamu.errors import ApplicationError


class Command(BaseCommand):
    help = (
        "Transcribe audio files through the pipeline (Celery workers must be running)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("files", nargs="+", type=Path)
        parser.add_argument("--wait", action="store_true", help="wait for the results")
        parser.add_argument("--format", choices=list(FORMATS), default="txt")
        parser.add_argument(
            "-o",
            "--output-dir",
            type=Path,
            help="write <name>.<format> files here instead of printing",
        )
        parser.add_argument("--language", default=None, help="e.g. en; default: detect")
        parser.add_argument(
            "--user", default=None, help="owner of the jobs (a username)"
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=None,
            help="give up waiting after N seconds",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        owner = None
        if options["user"]:
            owner = get_user_model().objects.filter(username=options["user"]).first()
            if owner is None:
                raise CommandError(f"no user named {options['user']!r}")

        jobs: list[Transcription] = []
        refused = 0
        for path in options["files"]:
            if not path.is_file():
                self.stderr.write(f"{path}: no such file")
                refused += 1
                continue
            with path.open("rb") as fh:
                try:
                    job = services.transcription_create(
                        owner=owner,
                        audio=File(fh, name=path.name),
                        language=options["language"],
                        source=Transcription.Source.CLI,
                    )
                except ApplicationError as exc:
                    self.stderr.write(f"{path}: refused ({exc.code}): {exc.message}")
                    refused += 1
                    continue
            jobs.append(job)
            self.stderr.write(f"{path}: queued as {job.id}")

        if not options["wait"]:
            for job in jobs:
                self.stdout.write(f"{job.id}\t{job.status}\t{job.original_filename}")
            if refused:
                sys.exit(1)
            return

        finished = self._wait(jobs, options["timeout"])
        failed = refused
        for job in finished:
            if job.status != Transcription.Status.SUCCEEDED:
                failed += 1
                self.stderr.write(
                    f"{job.original_filename}: {job.status}"
                    + (
                        f" ({job.error_code}): {job.error_message}"
                        if job.error_code
                        else ""
                    )
                )
                continue
            self._emit(job, options["format"], options["output_dir"])
        if failed:
            sys.exit(1)

    def _wait(
        self, jobs: list[Transcription], timeout: float | None
    ) -> list[Transcription]:
        ids = [job.pk for job in jobs]
        deadline = None if timeout is None else time.monotonic() + timeout
        done: dict[Any, Transcription] = {}
        with tqdm(
            total=len(ids),
            unit="file",
            file=sys.stderr,
            desc="transcribing",
            disable=None,  # no bar when stderr is not a terminal
        ) as bar:
            while len(done) < len(ids):
                for job in Transcription.objects.filter(
                    pk__in=[i for i in ids if i not in done],
                    status__in=Transcription.FINISHED,
                ):
                    done[job.pk] = job
                    bar.update(1)
                counts: dict[str, int] = {}
                for status in Transcription.objects.filter(pk__in=ids).values_list(
                    "status", flat=True
                ):
                    counts[status] = counts.get(status, 0) + 1
                bar.set_postfix(counts, refresh=True)
                if deadline is not None and time.monotonic() > deadline:
                    raise CommandError(
                        f"gave up waiting after {timeout:g} s; {len(ids) - len(done)} "
                        "job(s) still unfinished (are the workers running?)"
                    )
                if len(done) < len(ids):
                    time.sleep(0.25)
        return [done[i] for i in ids]

    def _emit(self, job: Transcription, fmt: str, output_dir: Path | None) -> None:
        body = render(
            fmt,
            job.text,
            job.segments,
            id=str(job.id),
            language=job.detected_language or job.language or None,
            duration=job.duration,
        )
        if output_dir is None:
            self.stdout.write(body.rstrip("\n"))
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        stem = Path(job.original_filename).stem or str(job.id)
        target = output_dir / f"{stem}.{fmt}"
        target.write_text(body, encoding="utf-8")
        self.stderr.write(f"{job.original_filename}: wrote {target}")
