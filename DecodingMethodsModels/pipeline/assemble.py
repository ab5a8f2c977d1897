"""Stage 4 of a run: once every batch of a run is on disk (from any rank), its sidecar and final
file are written and the partial files removed."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.pipeline.distributed import Process
from DecodingMethodsModels.pipeline.outputs import PartialStore, final_records, write_json_atomic
from DecodingMethodsModels.pipeline.plan import PlannedRun, Work

POLL_SECONDS = 0.5  # how often rank 0 looks for the other ranks' batches

def load_parts(planned: PlannedRun, expected: dict) -> dict[int, dict]:
    """Finished batches from every rank's partial file (a resumed job may differ in size)."""
    done = {}
    for part in planned.part_paths():
        done.update(PartialStore(part, expected).load())
    return done


def assemble_ready(config, pending: list[Work], facts: dict, say,
                   seen: dict | None = None) -> list[Path]:
    """Write the final file of every pending run whose batches are all on disk. With `seen`
    (run -> sizes of its partial files at the last look), unchanged runs are not re-read."""
    written = []
    for work in list(pending):
        if seen is not None:
            sizes = tuple((p.name, p.stat().st_size) for p in work.run.part_paths())
            if seen.get(id(work)) == sizes:
                continue
            seen[id(work)] = sizes
        entries = load_parts(work.run, work.part_fingerprint)
        if len(set(entries) & set(range(len(work.batches)))) == len(work.batches):
            written.append(assemble(config, work, entries, facts))
            reran = pairs_rerun(entries)
            note = f" ({rerun_note(reran)})" if reran and reran["count"] else ""
            say(f"wrote {work.run.final_path}{note}")
            pending.remove(work)
    return written


def wait_for_ranks(config, pending: list[Work], facts: dict, say, process: Process) -> list[Path]:
    """Rank 0, its own share done: assemble the remaining runs as the other ranks finish them.

    No collective is involved, so a rank with more work left (a resumed job) is waited for as
    long as it needs; if a rank dies, the launcher stops this one too.
    """
    written = assemble_ready(config, pending, facts, say)
    if pending and not process.is_distributed:
        missing = _missing(pending[0])
        raise UserError(f"{pending[0].run.final_path}: batches {missing[:10]} are missing; "
                        "rerun the same command to finish them")
    if pending:
        say(f"waiting for the other ranks to finish {len(pending)} run(s)")
    seen = {}
    while pending:
        time.sleep(POLL_SECONDS)
        written += assemble_ready(config, pending, facts, say, seen)
    return written


def _missing(work: Work) -> list[int]:
    return sorted(set(range(len(work.batches))) - set(load_parts(work.run, work.part_fingerprint)))


def pairs_rerun(entries: dict[int, dict]) -> dict | None:
    """The sidecar's record of the pairs the vLLM backend decoded again, from the batches'
    entries: count, count per reason, and each (question index, reason); None on hf."""
    if not any("pairs_rerun" in e for e in entries.values()):
        return None
    reran = [r for b in sorted(entries) for r in entries[b].get("pairs_rerun", [])]
    return {"count": len(reran), "reasons": dict(Counter(r["reason"] for r in reran)),
            "questions": reran}


def rerun_note(reran: dict) -> str:
    reasons = ", ".join(f"{why} {n}" for why, n in sorted(reran["reasons"].items()))
    return f"{reran['count']} pair(s) decoded again on vLLM: {reasons}"


def assemble(config, work: Work, entries: dict[int, dict], facts: dict) -> Path:
    """Sidecar, then final file (each atomically), then the partial files go."""
    planned = work.run
    ordered = [entries[b] for b in range(len(work.batches))]
    seconds = sum(e.get("seconds", 0.0) for e in ordered)
    tokens = sum(e.get("tokens", 0) for e in ordered)
    meta = {
        "fingerprint": work.expected,
        "config": config.to_dict(),
        "questions": len(planned.dataset.questions),
        "extended_from_records": len(work.kept) if work.kept else None,
        "generation": facts.get("generation"),
        "generated_tokens": tokens,
        "decode_seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 3) if seconds else None,
        **({} if (reran := pairs_rerun(entries)) is None else {"pairs_rerun": reran}),
        # the guide of ARGS or PAD and CoSteer's SLM belong to their runs only, not to others
        # of the command
        "environment": {k: v for k, v in facts.items()
                        if k != "generation" and (k != "guide" or planned.guided)
                        and (k != "costeer" or planned.method == "costeer")},
    }
    # the sidecar first: a final file without its sidecar would look like another config's
    write_json_atomic(planned.meta_path, meta)
    write_json_atomic(planned.final_path, final_records([{"records": work.kept}, *ordered]))
    for part in planned.part_paths():
        part.unlink(missing_ok=True)
    return planned.final_path

