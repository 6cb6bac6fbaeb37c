"""Management commands: the transcribe CLI through a real worker, and runstack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from django.core.management import call_command

from asr.models import Transcription
from kikipounamu.redis_server import embedded_running
from tests import processes
from tests.speech import espeak
from tests.speech import espeak_available

pytestmark = [
    pytest.mark.pipeline,
    pytest.mark.skipif(
        not espeak_available(), reason="espeak-ng is installed by `make test`"
    ),
]


def test_transcribe_command_waits_and_writes_subtitles(
    transactional_db, worker, tmp_path: Path, capsys
) -> None:
    clip = espeak("Good morning everyone.", tmp_path / "morning.wav")
    out = tmp_path / "out"

    call_command(
        "transcribe", str(clip), wait=True, format="srt", output_dir=out, timeout=120
    )

    job = Transcription.objects.get()
    assert job.source == "cli"
    assert job.status == "succeeded"
    srt = (out / "morning.srt").read_text()
    assert srt.startswith("1\n00:00:00,000 --> ")
    assert "morning" in srt.lower()


def test_transcribe_command_reports_refused_files(
    transactional_db, tmp_path: Path, capsys
) -> None:
    bogus = tmp_path / "notes.mp3"
    bogus.write_text("not audio at all")
    with pytest.raises(SystemExit) as exit_info:
        call_command("transcribe", str(bogus), str(tmp_path / "missing.wav"))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "refused (unsupported_format)" in err
    assert "no such file" in err
    assert Transcription.objects.count() == 0


def test_runstack_runs_the_sample_and_ctrl_c_stops_every_process(
    tmp_path: Path,
) -> None:
    # given a fresh var/ directory and free ports: runstack starts its own Redis
    env = dict(os.environ)
    for key in ("DJANGO_SETTINGS_MODULE", "REDIS_URL", "DATABASE_URL", "MEDIA_ROOT"):
        env.pop(key, None)
    redis_data = tmp_path / "var" / "redis"
    env.update(
        KIKI_VAR_DIR=str(tmp_path / "var"),
        WEB_PORT=str(processes.free_port()),
        FLOWER_PORT=str(processes.free_port()),
        WEB_CONCURRENCY="1",
        PYTHONUNBUFFERED="1",
    )
    log = (tmp_path / "runstack.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runstack"],
        cwd=processes.ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while "Press Ctrl-C" not in (text := Path(log.name).read_text()):
            assert proc.poll() is None, text[-3000:]
            assert time.monotonic() < deadline, text[-3000:]
            time.sleep(0.5)
        started = psutil.Process(proc.pid).children(recursive=True)
        # this var/'s own Redis, on its socket
        redis_pid = int((redis_data / "redis.pid").read_text())
        assert embedded_running(redis_data)
        assert len(started) >= 5  # honcho, web, two workers, beat, flower (+ children)

        # then it printed the sample's transcript, credentials and where to look
        assert "submitted welcome.ogg through the API" in text
        assert "speech recognition pipeline" in text.lower()
        assert "API token" in text
        assert "password" in text

        # when Ctrl-C is pressed
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = Path(log.name).read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "embedded redis stopped" in text
    # then every process it started is gone, its own Redis included
    time.sleep(1)
    alive = [
        p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]
    assert not alive, [p.cmdline() for p in alive]
    assert not psutil.pid_exists(redis_pid)
    assert not embedded_running(redis_data)
