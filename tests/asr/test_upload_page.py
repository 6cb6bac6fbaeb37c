"""The staff upload page in a real headless Chromium, against a live server and worker."""

from __future__ import annotations

import shutil
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import CHROMIUM
from tests.browser import browser  # noqa: F401 (a fixture)
from tests.browser import screenshot
from tests.browser import signed_in
from tests.factories import UserFactory
from tests.speech import espeak
from tests.speech import espeak_available

pytestmark = [
    pytest.mark.pipeline,
    pytest.mark.skipif(
        not espeak_available(), reason="espeak-ng is installed by `make test`"
    ),
    pytest.mark.skipif(
        not shutil.which(CHROMIUM), reason="chromium is installed by `make test`"
    ),
]


@pytest.fixture
def page(browser: Any, web: str, transactional_db: Any) -> Iterator[Any]:  # noqa: F811
    staff = UserFactory(is_staff=True, username="staffer")
    with signed_in(browser, web, "/upload/", staff) as page:
        page.wait_for_selector("#connection[data-state=live]")
        yield page


def test_uploaded_clips_are_transcribed_live_without_reloading(
    page: Any, worker: Any, tmp_path: Path
) -> None:
    first = espeak("The morning train was late again.", tmp_path / "train.wav")
    second = espeak("Please remember to lock the door.", tmp_path / "door.wav")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    page.set_input_files("#file-input", [str(first), str(second)])

    page.wait_for_function(
        "document.querySelectorAll('li.job[data-status=succeeded]').length === 2",
        timeout=120_000,
    )
    text = page.inner_text("#jobs").lower()
    assert "train" in text
    assert "door" in text
    # timestamps, an audio player and the downloads are there
    assert page.locator("li.job .segment time").count() >= 2
    assert page.locator("li.job audio").count() == 2
    assert page.locator("li.job a.download", has_text="srt").count() == 2
    assert navigations == []  # no reload happened
    screenshot(page, "upload-page.png")

    # the downloads work with the page's session
    href = page.locator("li.job a.download", has_text="srt").first.get_attribute("href")
    response = page.request.get(href)
    assert response.status == 200
    assert response.text().startswith("1\n")


def test_a_reload_while_a_job_runs_still_shows_its_result(
    page: Any, worker: Any, tmp_path: Path
) -> None:
    clip = espeak(
        "This is a longer recording. It keeps the worker busy for a little while, "
        "so that the page can be reloaded while the job is still running.",
        tmp_path / "long.wav",
    )
    page.set_input_files("#file-input", str(clip))
    page.wait_for_selector("li.job[data-status=queued], li.job[data-status=running]")
    job_id = page.locator("li.job").first.get_attribute("data-job-id")

    page.reload()
    page.wait_for_selector("#connection[data-state=live]")

    done = page.wait_for_selector(
        f"li.job[data-job-id='{job_id}'][data-status=succeeded]", timeout=120_000
    )
    assert done.query_selector_all(".segment")
    assert "recording" in done.inner_text().lower()
    screenshot(page, "upload-page-after-reload.png")


def test_a_failed_job_shows_its_error_and_can_be_retried(
    page: Any, worker: Any, tmp_path: Path
) -> None:
    # a WAV whose header promises far more audio than the file holds
    clip = espeak("Truncated.", tmp_path / "cut.wav")
    with wave.open(str(clip)) as src:
        frames = src.getnframes()
    data = clip.read_bytes()
    clip.write_bytes(data[: len(data) // 3])
    assert frames > 0

    page.set_input_files("#file-input", str(clip))
    failed = page.wait_for_selector("li.job[data-status=failed]", timeout=60_000)
    assert "truncated" in failed.inner_text().lower()
    assert "corrupt_audio" in failed.inner_text()

    job = page.locator("li.job").first
    job_id = job.get_attribute("data-job-id")
    seq_before = int(job.get_attribute("data-seq"))
    page.click("li.job[data-status=failed] button.retry")
    # it runs again (and, the file being what it is, fails again with the same code)
    page.wait_for_function(
        """([id, seq]) => {
          const li = document.querySelector(`li.job[data-job-id="${id}"]`);
          return li && Number(li.dataset.seq) > seq && li.dataset.status === 'failed'
            && li.innerText.includes('corrupt_audio');
        }""",
        arg=[job_id, seq_before],
        timeout=60_000,
    )
    job = page.request.get(f"/api/v1/transcriptions/{job_id}").json()
    assert (job["status"], job["attempts"]) == ("failed", 1)
