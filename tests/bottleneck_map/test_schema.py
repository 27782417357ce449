from __future__ import annotations

import re
from pathlib import Path

import pytest

from bottleneck_map.schema import SCHEMAS, TABLES, schema_for

DOC = Path(__file__).resolve().parents[2] / "docs" / "trace-format.md"


def _documented(table: str) -> set[str]:
    text = DOC.read_text()
    section = text.split(f"\n## {table}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.M))


@pytest.mark.parametrize("table", TABLES)
def test_every_schema_field_is_documented_and_nothing_else(table):
    assert _documented(table) == {f.name for f in SCHEMAS[table]}


def test_times_are_int64_nanoseconds():
    for schema in SCHEMAS.values():
        for f in schema:
            if f.name.endswith("_ns"):
                assert str(f.type) in ("int64", "list<item: int64>"), f.name


def test_unknown_table_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown bundle table 'frames'"):
        schema_for("frames")
