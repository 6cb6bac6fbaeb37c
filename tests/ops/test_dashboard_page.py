"""The ops dashboard in a real headless Chromium, against the live server."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from django.utils import timezone

from asr.models import Transcription
from tests.browser import CHROMIUM
from tests.browser import browser  # noqa: F401 (a fixture)
from tests.browser import screenshot
from tests.browser import signed_in
from tests.factories import UserFactory

pytestmark = [
    pytest.mark.pipeline,
    pytest.mark.skipif(
        not shutil.which(CHROMIUM), reason="chromium is installed by `make test`"
    ),
]


@pytest.fixture
def ops_page(browser: Any, web: str, transactional_db: Any) -> Iterator[Any]:  # noqa: F811
    staff = UserFactory(is_staff=True, username="operator")
    with signed_in(browser, web, "/ops/", staff) as page:
        yield page


def test_the_dashboard_updates_live_without_reloading(ops_page: Any) -> None:
    page = ops_page
    page.wait_for_selector("#connection[data-state=live]")
    assert page.inner_text("#admission") == "Accepting new jobs."
    assert page.inner_text("#q-asr").strip().isdigit()
    assert page.locator("#states tr").count() == len(Transcription.Status.values)
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    # when jobs fail with a code, the next snapshot shows them
    for _ in range(2):
        Transcription.objects.create(
            status="failed",
            error_code="corrupt_audio",
            error_message="damaged",
            finished_at=timezone.now(),
        )
    page.wait_for_function(
        "[...document.querySelectorAll('#failures tr')]"
        ".some(tr => tr.textContent.includes('corrupt_audio'))",
        timeout=30_000,
    )
    assert navigations == []
    # the chart was drawn, and the failed jobs are one click away
    assert page.evaluate(
        "document.getElementById('chart').getContext('2d')"
        ".getImageData(0, 0, 900, 220).data.some(v => v !== 0)"
    )
    href = page.get_attribute("#failed-jobs", "href")
    assert href == "/admin/asr/transcription/?status__exact=failed"
    screenshot(page, "ops-dashboard.png")
