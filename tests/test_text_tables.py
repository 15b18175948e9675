"""Tables for people: keys shortened without becoming ambiguous, long cells wrapped without being cut."""

from __future__ import annotations

from sparsecc.tables import text_table, unique_prefixes, wrap_column, wrap_fields


def test_unique_prefixes_are_as_short_as_allowed_and_never_shared():
    keys = ["0123456789ab", "0123456789cd", "01234567zz", "99999999aaaa", "abc"]
    short = unique_prefixes(keys, least=8)
    assert short == {"0123456789ab": "0123456789a", "0123456789cd": "0123456789c", "01234567zz": "01234567z",
                     "99999999aaaa": "99999999", "abc": "abc"}
    assert all(not other.startswith(short[key]) for key in keys for other in keys if other != key)
    assert unique_prefixes(list(reversed(keys)), least=8) == short  # the order given does not matter


def test_long_cells_are_wrapped_between_fields_and_never_cut():
    subject = "op=Conv lowering=tap-gather baseline=dense in=[1, 64, 56, 56] out=[1, 64, 28, 28] dtype=float32"
    lines = wrap_fields(subject, 30)
    assert lines == ["op=Conv lowering=tap-gather", "baseline=dense", "in=[1, 64, 56, 56]",
                     "out=[1, 64, 28, 28]", "dtype=float32"]
    assert wrap_fields("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]  # one field too long alone: broken
    rows = wrap_column([["k1", subject, "1.3x"], ["k2", "short", "0.9x"]], 1, 30)
    assert rows[0] == ["k1", "op=Conv lowering=tap-gather", "1.3x"] and rows[1] == ["", "  baseline=dense", ""]
    assert rows[-1] == ["k2", "short", "0.9x"] and len(rows) == 6
    table = text_table(rows, ["key", "measured", "speedup"])
    assert " ".join(table.split()).count("out=[1, 64, 28, 28]") == 1
