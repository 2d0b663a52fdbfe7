"""What a fault test asserts on the log of ``tickwire run --log-format json``."""

from __future__ import annotations

import json


def assert_clean_json_log(text: str) -> list[dict]:
    """What a fault test asserts on the captured stderr of ``tickwire run --log-format json``:
    every line is one JSON object, none carries a traceback or an asyncio "exception was never
    retrieved". Returns the parsed lines."""
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            lines.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"stderr line {number} is not JSON: {line[:300]!r}") from None
        assert "Traceback" not in line, f"stderr line {number} carries a traceback: {line[:1000]}"
        assert "never retrieved" not in line, f"stderr line {number}: {line[:1000]}"
    return lines
