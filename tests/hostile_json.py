"""Bodies that are JSON to Python's parser, or nearly, and must still be refused at
every door with a client error: deep nesting (Python's parser raises
RecursionError), and values PostgreSQL's jsonb would refuse on storing."""

HOSTILE_JSON = {
    "arrays nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "objects nested 5,000 deep": b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    "unclosed nesting": b"[" * 100_000,
    "nested just past the bound": b"[" * 65 + b"]" * 65,
    "NaN": b'{"update_id": NaN}',
    "Infinity": b'{"update_id": 1, "x": -Infinity}',
    "a number past a double": b'{"update_id": 1, "x": 1e999999}',
    "a lone surrogate": b'{"update_id": 1, "x": "\\ud800"}',
    "a lone surrogate as a key": b'{"update_id": 1, "\\udfff": 1}',
    "NUL in a string": b'{"update_id": 1, "x": "a\\u0000b"}',
}
