"""kikipounamu.json_input: what every door's JSON goes through."""

from __future__ import annotations

import pytest

from kikipounamu import json_input
from tests.hostile_json import HOSTILE_JSON


@pytest.mark.parametrize("body", HOSTILE_JSON.values(), ids=HOSTILE_JSON.keys())
def test_hostile_json_is_refused_with_a_reason(body: bytes) -> None:
    with pytest.raises(json_input.JSONInputError) as refused:
        json_input.loads(body)
    assert str(refused.value)


def test_json_within_the_bounds_parses() -> None:
    nested = b"[" * 64 + b"]" * 64
    assert json_input.loads(b'{"a": ["caf\xc3\xa9", 1.5, null, true]}') == {
        "a": ["café", 1.5, None, True]
    }
    value = json_input.loads(nested)
    for _ in range(63):
        value = value[0]
    assert value == []
