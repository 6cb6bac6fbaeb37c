"""Dictation on the staff page in a real headless Chromium whose microphone is its
fake capture device playing espeak-ng speech, against a real web process and a real
live worker (whisper tiny.en)."""

from __future__ import annotations

import shutil
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import processes
from tests.browser import CHROMIUM
from tests.browser import fake_microphone_args
from tests.browser import launched
from tests.browser import screenshot
from tests.browser import signed_in
from tests.factories import UserFactory
from tests.speech import espeak_available
from tests.speech import speech_stream

pytestmark = [
    pytest.mark.pipeline,
    pytest.mark.skipif(
        not espeak_available(), reason="espeak-ng is installed by `make test`"
    ),
    pytest.mark.skipif(
        not shutil.which(CHROMIUM), reason="chromium is installed by `make test`"
    ),
]

SENTENCE = "Open the window and let some fresh air into the room."
RATE = 48_000

# Every message of the live socket, for a failure to show what the page was told.
RECORD_LIVE_MESSAGES = """
window.liveMessages = [];
window.WebSocket = class extends window.WebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    if (String(url).includes("/ws/live/")) {
      this.addEventListener("message", (event) => {
        if (typeof event.data === "string") window.liveMessages.push(event.data);
      });
    }
  }
};
"""

# Every change to the live transcript, as the page showed it: the text and colour of
# each partial, so a test can tell a greyed guess was on screen at some point.
RECORD_PARTIALS = """() => {
  window.partialsSeen = [];
  const transcript = document.getElementById("live-transcript");
  new MutationObserver(() => {
    for (const node of transcript.querySelectorAll(".utterance.partial")) {
      if (node.textContent.trim()) {
        window.partialsSeen.push({
          text: node.textContent,
          color: getComputedStyle(node).color,
          hidden: node.getAttribute("aria-hidden"),
        });
      }
    }
  }).observe(transcript, {
    subtree: true, childList: true, characterData: true, attributes: true,
  });
}"""


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sentence as a WAV, with two seconds of silence after it: Chromium plays
    the file in a loop, and the silence lets the server end the utterance before
    the sentence comes round again."""
    folder = tmp_path_factory.mktemp("dictation")
    pcm, _ = speech_stream([SENTENCE], folder, rate=RATE, lead=0.5, tail=2.0)
    path = folder / "speech.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(pcm)
    return path


@pytest.fixture(scope="module")
def microphone_browser(speech_wav: Path) -> Iterator[Any]:
    with launched(*fake_microphone_args(speech_wav)) as browser:
        yield browser


@pytest.fixture(scope="module")
def busy_web(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    """A web process that takes no live stream at all: every one is 'busy'."""
    proc, base = processes.start_web(LIVE_MAX_STREAMS="0")
    yield base
    proc.stop()


def wait_for(page: Any, expression: str, *, timeout: float) -> None:
    """``page.wait_for_function``, failing with what the live socket said."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(expression, timeout=timeout)
    except PlaywrightTimeout:
        said = page.evaluate("window.liveMessages")
        raise AssertionError(
            f"not seen: {expression}\nthe live socket said: {said}"
        ) from None


def dictation_page(browser: Any, base: str) -> Any:
    staff = UserFactory(is_staff=True)
    return signed_in(browser, base, "/upload/", staff, init_script=RECORD_LIVE_MESSAGES)


def test_dictated_words_appear_greyed_then_final_and_the_session_becomes_a_job(
    microphone_browser: Any, web: str, live_worker: Any, transactional_db: Any
) -> None:
    with dictation_page(microphone_browser, web) as page:
        page.wait_for_selector("#connection[data-state=live]")
        page.evaluate(RECORD_PARTIALS)
        transcript = page.get_by_label("Live transcript")
        assert transcript.get_attribute("aria-live") == "polite"

        page.get_by_role("button", name="Dictate from the microphone").click()

        # tiny.en on espeak-ng gets this sentence's content words, if not every one.
        # And a partial showed at some point: on a loaded machine the partials of an
        # utterance can all come back after it ended, and are rightly dropped, but
        # the file plays in a loop, so the sentence comes round again.
        wait_for(
            page,
            """() => {
              const text = [...document.querySelectorAll(
                '#live-transcript .utterance.final')].map((n) => n.textContent)
                .join(' ').toLowerCase();
              return text.includes('window') && text.includes('fresh air')
                && window.partialsSeen.length > 0;
            }""",
            timeout=120_000,
        )
        assert page.locator("#dictation").get_attribute("data-state") == "live"
        session = page.locator("#dictation").get_attribute("data-session")
        assert session
        # the partials on screen were greyed and kept from screen readers; the
        # finals that replaced them are in the text's own colour
        partials = page.evaluate("window.partialsSeen")
        final_color = page.locator("#live-transcript .utterance.final").first.evaluate(
            "(node) => getComputedStyle(node).color"
        )
        assert final_color not in {p["color"] for p in partials}
        assert all(p["hidden"] == "true" for p in partials)
        screenshot(page, "dictation-live.png")

        page.get_by_role("button", name="Stop dictating").click()

        page.wait_for_selector("#dictation[data-state=idle]", timeout=60_000)
        assert page.locator("#dictation-error").is_hidden()
        assert "saved" in page.inner_text("#dictation-status")
        job = page.wait_for_selector(
            f"li.job[data-job-id='{session}'][data-status=succeeded]", timeout=30_000
        )
        assert "window" in job.inner_text().lower()
        # the session's transcript is what the page showed as finals
        stored = page.request.get(f"/api/v1/transcriptions/{session}").json()
        assert stored["source"] == "live"
        assert "fresh air" in stored["text"].lower()
        screenshot(page, "dictation-done.png")


def test_a_busy_server_is_told_to_the_user_in_words(
    microphone_browser: Any, busy_web: str, transactional_db: Any
) -> None:
    with dictation_page(microphone_browser, busy_web) as page:
        page.get_by_role("button", name="Dictate from the microphone").click()

        error = page.get_by_role("alert")
        error.wait_for()
        words = error.inner_text()
        assert "too busy" in words
        assert "retry in 10 s" in words  # the server's reason, passed on
        assert page.locator("#dictation").get_attribute("data-state") == "idle"
        assert page.get_by_role(
            "button", name="Dictate from the microphone"
        ).is_enabled()
