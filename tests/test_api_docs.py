"""The API docs pages in a real headless Chromium, against the live server, with every
other host out of reach: a machine without internet still gets working docs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.browser import CHROMIUM
from tests.browser import browser  # noqa: F401 (a fixture)
from tests.browser import screenshot

pytestmark = [
    pytest.mark.pipeline,
    pytest.mark.skipif(
        not shutil.which(CHROMIUM), reason="chromium is installed by `make test`"
    ),
]


@dataclass
class OfflinePage:
    """A page whose requests to any host but the test server are aborted, and noted."""

    page: Any
    elsewhere: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


@pytest.fixture
def offline_page(browser: Any, web: str) -> Iterator[OfflinePage]:  # noqa: F811
    context = browser.new_context(base_url=web)
    own_host = urlsplit(web).netloc
    result = OfflinePage(page=context.new_page())

    def only_own_host(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).netloc == own_host:
            route.continue_()
        else:
            result.elsewhere.append(url)
            route.abort("internetdisconnected")

    context.route("**/*", only_own_host)
    result.page.on(
        "response",
        lambda r: r.status >= 400 and result.failed.append(f"{r.status} {r.url}"),
    )
    result.page.set_default_timeout(30_000)
    try:
        yield result
    finally:
        context.close()


@pytest.mark.parametrize(
    ("path", "submit_operation", "operations"),
    [
        pytest.param(
            "/api/docs/",
            ".opblock-post:has(.opblock-summary-path[data-path='/api/v1/transcriptions'])",
            ".opblock",
            id="swagger-ui",
        ),
        # ReDoc shows each operation's method and path in its right-hand panel.
        pytest.param(
            "/api/redoc/",
            "button:has(.http-verb.post):has(span:text-is('/api/v1/transcriptions'))",
            ".http-verb",
            id="redoc",
        ),
    ],
)
def test_the_docs_render_the_operations_without_other_hosts(
    offline_page: OfflinePage, path: str, submit_operation: str, operations: str
) -> None:
    page = offline_page.page

    # the docs are public, like the schema they show (drf-spectacular's default)
    page.goto(path)

    page.locator(submit_operation).first.wait_for(state="visible")
    screenshot(page, f"{path.strip('/').replace('/', '-')}.png")
    assert page.locator(operations).count() >= 5
    assert offline_page.elsewhere == []
    assert offline_page.failed == []
