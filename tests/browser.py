"""Driving the project's pages in a real headless Chromium (Debian's package) with
Playwright's Python package; Playwright's own browser download cannot work here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@contextlib.contextmanager
def launched(*extra_args: str) -> Iterator[Any]:
    """A headless Chromium, with ``extra_args`` on its command line."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread, which makes
    # Django refuse database calls (made by fixtures here, not by the app under
    # test, which runs in its own processes). The documented way out:
    # https://docs.djangoproject.com/en/5.2/topics/async/#envvar-DJANGO_ALLOW_ASYNC_UNSAFE
    mp = pytest.MonkeyPatch()
    mp.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                # This machine has no network: keep Chromium from trying to reach one.
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    *extra_args,
                ],
            )
            yield browser
            browser.close()
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched() as browser:
        yield browser


def fake_microphone_args(wav: Path) -> list[str]:
    """Chromium's fake capture device playing ``wav`` (looped) as the microphone,
    granted without a prompt."""
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
    ]


@contextlib.contextmanager
def signed_in(
    browser: Any, base: str, path: str, user: Any, *, init_script: str = ""
) -> Iterator[Any]:
    """A page at ``path``, reached through the sign-in form it redirects to;
    ``init_script`` runs in every document before the page's own scripts."""
    context = browser.new_context(base_url=base)
    if init_script:
        context.add_init_script(init_script)
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(path)
        assert "/accounts/login/" in page.url  # the page asks for a sign-in first
        page.fill("input[name=username]", user.username)
        page.fill("input[name=password]", "pw-for-tests")
        page.click("button[type=submit]")
        page.wait_for_url(f"**{path}")
        yield page
    finally:
        context.close()


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)
