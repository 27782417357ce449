"""Step request ids read dictionary-encoded join to the requests exactly as plain strings do."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from factories import request_row, step_row

from bottleneck_map.analyzer import analyze
from bottleneck_map.analyzer.data import load
from bottleneck_map.analyzer.stages import _ids, step_membership
from bottleneck_map.bundle import BundleWriter, new_meta, read_bundle


def _bundle(path):
    w = BundleWriter(path, new_meta("test", model={"name": "test"}), flush_rows=3)  # several segments
    for i in range(6):
        w.add_request(request_row(i))
    ids = [f"req-{i}" for i in range(6)]
    for s in range(9):
        w.add_step(step_row(s, ids[s % 4 : s % 4 + 3] + (["unknown"] if s == 4 else [])))
    w.add_step(step_row(9, ["req-5", None]))
    w.close()
    return path


def test_dictionary_codes_join_like_strings(tmp_path):
    path = _bundle(tmp_path / "b")
    t = load(path)
    assert pa.types.is_dictionary(t.steps.schema.field("request_ids").type.value_type)
    assert t.steps.column("request_ids").num_chunks > 1
    plain = read_bundle(path).table("steps")
    ids = _ids(t.requests)
    coded = step_membership(t.steps, ids)
    strings = step_membership(plain, ids)
    assert np.array_equal(coded.req, strings.req) and np.array_equal(coded.step, strings.step)
    assert (coded.req == -1).sum() == 2  # "unknown" and the null id
    # A dictionary-typed id list (as built from the steps' own value type) is accepted too.
    one = step_membership(t.steps, pa.array(["req-5"], t.steps.schema.field("request_ids").type.value_type))
    assert set(one.req[one.req >= 0]) == {0}


def test_analysis_is_the_same_either_way(tmp_path):
    path = _bundle(tmp_path / "b")
    b = read_bundle(path)
    t = load(path)
    plain = type(t)(meta=t.meta, requests=t.requests, steps=b.table("steps"), samples=t.samples, path=t.path)
    assert analyze(t).to_dict() == analyze(plain).to_dict()
