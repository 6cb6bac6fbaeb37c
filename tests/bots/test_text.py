"""Cutting a long transcript into Telegram messages."""

from __future__ import annotations

import random

import pytest

from bots.transport.text import MAX_MESSAGE_LENGTH
from bots.transport.text import split_message
from bots.transport.text import utf16_length


def words(n: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    vocabulary = ["speech", "recognition", "turns", "spoken", "words", "into", "text"]
    sentences = []
    while sum(len(s) + 1 for s in sentences) < n:
        sentence = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(4, 14)))
        sentences.append(sentence.capitalize() + ".")
    return " ".join(sentences)[:n].strip()


def same_words(parts: list[str], original: str) -> bool:
    return " ".join(parts).split() == original.split()


def test_a_short_text_is_one_message() -> None:
    assert split_message("Hello world.") == ["Hello world."]


def test_nothing_to_say_is_no_message() -> None:
    assert split_message("") == []
    assert split_message("  \n ") == []


def test_a_text_of_exactly_the_limit_is_one_message() -> None:
    text = "a" * MAX_MESSAGE_LENGTH
    assert split_message(text) == [text]


@pytest.mark.parametrize("length", [4097, 9000, 30_000, 100_000])
def test_a_long_transcript_is_cut_at_sentence_ends_within_the_limit(
    length: int,
) -> None:
    text = words(length)
    parts = split_message(text)
    assert all(0 < utf16_length(p) <= MAX_MESSAGE_LENGTH for p in parts)
    # no message is wasted: each one but the last is at least half full
    assert all(utf16_length(p) >= MAX_MESSAGE_LENGTH // 2 for p in parts[:-1])
    # every part but the last ends a sentence, and no word is lost or cut
    assert all(p.endswith(".") for p in parts[:-1])
    assert same_words(parts, text)


def test_paragraphs_are_preferred_over_sentences() -> None:
    first = words(3000, seed=2)
    second = words(3000, seed=3)
    parts = split_message(f"{first}\n\n{second}")
    assert parts == [first, second]


def test_a_text_without_sentence_ends_is_cut_between_words() -> None:
    text = " ".join(["word"] * 3000)  # 14999 characters, no full stop
    parts = split_message(text)
    assert all(utf16_length(p) <= MAX_MESSAGE_LENGTH for p in parts)
    assert all(set(p.split()) == {"word"} for p in parts)
    assert same_words(parts, text)


def test_one_enormous_word_is_cut_where_it_must_be() -> None:
    text = "x" * 10_000
    parts = split_message(text)
    assert [len(p) for p in parts] == [4096, 4096, 1808]
    assert "".join(parts) == text


def test_length_is_counted_as_telegram_does_in_utf16_units() -> None:
    # given a text of emoji, each two UTF-16 units: 3000 of them are 6000 units
    text = "🎙" * 3000
    parts = split_message(text)
    assert [utf16_length(p) for p in parts] == [4096, 1904]
    assert "".join(parts) == text  # no surrogate pair is split


def test_a_tiny_limit_still_ends() -> None:
    assert split_message("ab cd", limit=1) == ["a", "b", "c", "d"]


def test_acknowledgement_says_the_expected_wait_when_known() -> None:
    from bots.transport.text import ack_text

    assert ack_text(1) == "Recognizing… (you are next in the queue)"
    assert ack_text(3, 45) == "Recognizing… (position 3 in the queue, about 45 s)"
    assert ack_text(9, 600) == "Recognizing… (position 9 in the queue, about 10 min)"
