"""Append-only text from partials that revise themselves.

A live partial re-transcribes its utterance so far, so its words may change from one
partial to the next (the last word, cut by the audio, most of all). Protocols whose
clients append what they are sent (FunASR's online pieces, OpenAI's deltas) can only
be sent words that will not change. The rule here is the "local agreement" of
whisper_streaming (Machacek et al., 2023): a word is sent once two partials in a row
agree on it and on every word before it. A hallucination on the first fraction of a
second ("So.") is not repeated by the next partial, and never goes out.

Words are what spaces separate; in scripts written without spaces (Chinese,
Japanese) each character is one.
"""

from __future__ import annotations

import re

_UNSPACED = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# A token with the space before it, so that joining tokens gives the text back.
_TOKEN = re.compile(rf"\s*(?:[{_UNSPACED}]|[^\s{_UNSPACED}]+)")
_WORD = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.strip())


def _key(token: str) -> str:
    # Agreement ignores case and punctuation: "room" and "room." agree.
    return " ".join(_WORD.findall(token.lower()))


def _agreed(a: list[str], b: list[str]) -> int:
    count = 0
    for mine, theirs in zip(a, b, strict=False):
        if _key(mine) != _key(theirs):
            break
        count += 1
    return count


class StablePrefix:
    """Per utterance: ``feed`` each partial's text; what may be appended now."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self._previous: list[str] = []

    def feed(self, text: str) -> str:
        words = tokens(text)
        agreed = _agreed(words, self._previous)
        self._previous = words
        # Nothing more while the words already sent are no longer agreed on.
        if agreed <= len(self.sent) or _agreed(self.sent, words) < len(self.sent):
            return ""
        new = words[len(self.sent) : agreed]
        self.sent.extend(new)
        delta = "".join(new)
        return delta.lstrip() if len(self.sent) == len(new) else delta

    def rest(self, final: str) -> str | None:
        """What the final adds to the words sent; None if it does not start with
        them (they were revised after all)."""
        words = tokens(final)
        if _agreed(self.sent, words) < len(self.sent):
            return None
        rest = "".join(words[len(self.sent) :])
        return rest if self.sent else rest.lstrip()

    def rest_after_revision(self, final: str) -> str:
        """The final's words past as many as were sent (a client that appends keeps
        the revised words it has)."""
        rest = "".join(tokens(final)[len(self.sent) :])
        return rest if self.sent else rest.lstrip()
