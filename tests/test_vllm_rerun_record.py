"""The record of the pairs the vLLM backend decoded again: the sidecar's `pairs_rerun` from the
batches' partial entries (none on hf), the "wrote" line's note, and the total the command's
last line gives. Pure bookkeeping: no vLLM needed."""

from __future__ import annotations

import json
from types import SimpleNamespace

from DecodingMethodsModels.pipeline.assemble import pairs_rerun, rerun_note
from DecodingMethodsModels.pipeline.runner import rerun_total


def test_sidecar_record_sums_the_batches_in_order():
    entries = {1: {"pairs_rerun": [{"index": 7, "reason": "out_of_step"}]},
               0: {"pairs_rerun": [{"index": 2, "reason": "out_of_step"},
                                   {"index": 3, "reason": "answers_differ"}]}}
    reran = pairs_rerun(entries)
    assert reran == {"count": 3, "reasons": {"out_of_step": 2, "answers_differ": 1},
                     "questions": [{"index": 2, "reason": "out_of_step"},
                                   {"index": 3, "reason": "answers_differ"},
                                   {"index": 7, "reason": "out_of_step"}]}
    assert rerun_note(reran) == "3 pair(s) decoded again on vLLM: answers_differ 1, out_of_step 2"
    assert pairs_rerun({0: {"pairs_rerun": []}})["count"] == 0  # vLLM, none re-run
    assert pairs_rerun({0: {"records": []}}) is None  # hf: no such key in the sidecar


def test_last_line_total_counts_the_runs_written(tmp_path):
    works = []
    for name, count in (("la", 2), ("amulet", 0), ("pad", 5)):
        meta = tmp_path / f"{name}.meta.json"
        meta.write_text(json.dumps({"pairs_rerun": {"count": count}}))
        works.append(SimpleNamespace(run=SimpleNamespace(final_path=tmp_path / f"{name}.json",
                                                         meta_path=meta)))
    hf = tmp_path / "base.meta.json"
    hf.write_text("{}")
    works.append(SimpleNamespace(run=SimpleNamespace(final_path=tmp_path / "base.json",
                                                     meta_path=hf)))
    written = [w.run.final_path for w in works if w.run.final_path.stem != "pad"]
    assert rerun_total(works, written) == 2  # pad not written by this command
