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


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread, which makes
    # Django refuse database calls (made by fixtures here, not by the app under
    # test, which runs in its own processes). The documented way out:
    # https://docs.djangoproject.com/en/5.2/topics/async/#envvar-DJANGO_ALLOW_ASYNC_UNSAFE
    mp = pytest.MonkeyPatch()
    mp.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
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
            ],
        )
        yield browser
        browser.close()
    mp.undo()


@contextlib.contextmanager
def signed_in(browser: Any, base: str, path: str, user: Any) -> Iterator[Any]:
    """A page at ``path``, reached through the sign-in form it redirects to."""
    context = browser.new_context(base_url=base)
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
