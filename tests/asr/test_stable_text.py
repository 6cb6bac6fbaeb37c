"""Append-only text from self-revising partials (asr.realtime.stable_text)."""

from __future__ import annotations

from asr.realtime.stable_text import StablePrefix


def feed_all(partials: list[str]) -> list[str]:
    stable = StablePrefix()
    return [stable.feed(p) for p in partials]


def test_a_word_goes_out_once_two_partials_agree_on_it_and_all_before() -> None:
    assert feed_all(
        [
            "So.",
            "Open the win",
            "Open the window and",
            "Open the window and let some",
            "Open the window and let some fresh air.",
        ]
    ) == ["", "", "Open the", " window and", " let some"]


def test_case_and_punctuation_do_not_break_agreement() -> None:
    # The newer partial's spelling of the agreed words goes out.
    assert feed_all(["Hello, world", "hello world again"]) == ["", "hello world"]


def test_a_revision_of_sent_words_sends_nothing_until_they_agree_again() -> None:
    stable = StablePrefix()
    for partial in ("the cat sat", "the cat sat on"):
        stable.feed(partial)
    assert stable.feed("a cat sat on the") == ""
    assert stable.feed("a cat sat on the mat") == ""
    assert stable.rest("A cat sat on the mat.") is None
    assert stable.rest_after_revision("A cat sat on the mat.") == " on the mat."


def test_the_final_adds_its_rest_to_what_was_sent() -> None:
    stable = StablePrefix()
    for partial in ("open the", "open the window"):
        stable.feed(partial)
    assert stable.rest("Open the window and let some fresh air in.") == (
        " window and let some fresh air in."
    )
    assert StablePrefix().rest("Nothing sent yet.") == "Nothing sent yet."


def test_scripts_without_spaces_agree_character_by_character() -> None:
    assert feed_all(["今天天", "今天天气", "今天天气很好"]) == ["", "今天天", "气"]
