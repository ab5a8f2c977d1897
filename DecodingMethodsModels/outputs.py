"""Where results go and how they survive interruption.

Per run (preference, model, dataset, method) the directory `{output_dir}/{pref}/{model}/{dataset}`
holds, while the run is under way, `{method}.part{rank}.jsonl`: a header line with the run's
fingerprint, then one line per finished batch, appended, flushed and fsync'd. When every batch is
there the records are sorted by index and written to `{method}.json` through a temporary file
and a rename, with the sidecar `{method}.meta.json`; then the partial files are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from .errors import UserError


def preference_slug(pref_name: str | None, pref_text: str | None) -> str:
    """The directory name of a preference: its name, or a readable slug of free text."""
    if pref_text is None:
        return pref_name
    words = re.sub(r"[^a-z0-9]+", "-", pref_text.lower()).strip("-")[:48].rstrip("-")
    digest = hashlib.sha256(pref_text.encode()).hexdigest()[:8]
    return f"custom-{words or 'text'}-{digest}"


def run_dir(output_dir: str | Path, pref: str, model: str, dataset: str) -> Path:
    return Path(output_dir) / pref / model / dataset


def check_writable(output_dir: str | Path) -> None:
    """Fail before any model is loaded if nothing could be written under `output_dir`."""
    path = Path(output_dir).resolve()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to output directory {output_dir} ({probe} is read-only)")


def write_json_atomic(path: Path, obj: object) -> None:
    """Write JSON to a temporary file beside `path`, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> object | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


class PartialStore:
    """Append-only JSONL of finished batches for one rank of one run."""

    def __init__(self, path: Path, fingerprint: dict):
        self.path = path
        self.fingerprint = fingerprint

    def load(self, repair: bool = False) -> dict[int, dict]:
        """Finished batch entries by batch number, ignoring a torn last line (a kill mid-write).

        With `repair` (only for the file this process appends to) the torn tail is cut off.
        A header from another configuration is refused.
        """
        if not self.path.exists():
            return {}
        raw = self.path.read_bytes()
        good_bytes, entries = 0, {}
        for number, line in enumerate(raw.split(b"\n")[:-1]):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break
            if number == 0:
                self._check_header(entry)
            else:
                entries[entry["batch"]] = entry
            good_bytes += len(line) + 1
        if repair and good_bytes == 0:
            self.path.unlink()
        elif repair and good_bytes < len(raw):
            with open(self.path, "r+b") as handle:
                handle.truncate(good_bytes)
        return entries

    def _check_header(self, header: dict) -> None:
        stored = header.get("fingerprint", {})
        changed = sorted(k for k in set(stored) | set(self.fingerprint)
                         if stored.get(k) != self.fingerprint.get(k))
        if changed:
            raise UserError(
                f"{self.path} holds partial results of a different configuration (differs in: "
                f"{', '.join(changed)}); rerun with the same settings to resume, or --overwrite"
            )

    def append(self, batch: int, records: list[dict], **stats: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with open(self.path, "a", encoding="utf-8") as handle:
            if new:
                handle.write(json.dumps({"fingerprint": self.fingerprint}) + "\n")
            entry = {"batch": batch, "records": records, **stats}
            handle.write(json.dumps(entry, ensure_ascii=False))
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def final_records(entries: Iterable[dict]) -> list[dict]:
    records = [r for entry in entries for r in entry["records"]]
    return sorted(records, key=lambda r: r["index"])
