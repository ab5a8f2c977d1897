"""PAD's two evaluation sets as benchmark files (a JSON list of {"index", "question"}) in data/.

    python data/fetch_pad_sets.py --psoups_from PATH/koala_eval_50.json   # -> data/psoups.json
    python data/fetch_pad_sets.py --steers                                # -> data/steers.json

P-Soups: the 50 Koala evaluation prompts of PAD's repository (inference/data/koala_eval_50.json,
a JSON list of {"id", "prompt"}), read from a local copy and checked by its sha256; index = id.
HelpSteer2 ("steers"): the nvidia/HelpSteer2 validation prompts of at most 100 characters,
every second one ([1::2], as PAD selects them); needs the Hugging Face hub. Neither file is
part of this repository. Then: python main.py --eval_data psoups (or steers).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

PSOUPS_SHA256 = "51e12b8d7e14a062a937940155618206c38e6abe6e1cb8d3662d48563b02a012"
STEERS_REPO = "nvidia/HelpSteer2"
STEERS_FILE = "validation.jsonl.gz"
STEERS_MAX_CHARS = 100


class DataError(Exception):
    """A one-line problem with the inputs (exit 2) or with reaching the hub (exit 1)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def psoups_records(items: object, where: str) -> list[dict]:
    """PAD's ``[{"id", "prompt"}]`` as ``[{"index": int(id), "question": prompt}]``."""
    if not isinstance(items, list) or not items:
        raise DataError(f"{where}: expected a non-empty JSON list of {{'id', 'prompt'}}")
    records = []
    for position, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise DataError(f"{where}: item {position} has no 'prompt' string")
        try:
            index = int(item["id"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}: item {position} has no integer 'id'") from None
        records.append({"index": index, "question": item["prompt"]})
    return records


def steers_questions(prompts: list[str]) -> list[str]:
    """PAD's HelpSteer2 selection: prompts of at most 100 characters, then every second one.

    HelpSteer2 holds two responses per prompt, one row each, so the prompts come in pairs;
    ``[1::2]`` keeps one of each pair.

    >>> steers_questions(["a", "a", "x" * 101, "x" * 101, "b", "b", "c"])
    ['a', 'b']
    """
    return [p for p in prompts if len(p) <= STEERS_MAX_CHARS][1::2]


def read_psoups(path: Path) -> list[dict]:
    """The checked P-Soups copy at ``path`` as benchmark records."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the P-Soups copy {path}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != PSOUPS_SHA256:
        raise DataError(f"{path}: sha256 {digest[:12]}... is not that of PAD's koala_eval_50.json "
                        f"({PSOUPS_SHA256[:12]}...)")
    return psoups_records(json.loads(raw), str(path))


def hub_unreachable() -> str | None:
    """Why the dataset hub cannot be reached (checked in seconds), or None if it answers."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=5).close()
    except OSError as exc:
        return f"{url.hostname}:{port} cannot be reached ({exc.strerror or exc})"
    return None


def read_steers() -> list[dict]:
    """Download HelpSteer2's validation split and select PAD's prompts."""
    why = hub_unreachable()
    if why is not None:
        raise DataError(f"HelpSteer2 (steers) needs the Hugging Face dataset {STEERS_REPO} "
                        f"({STEERS_FILE}) from the hub: {why}; run this where the hub is "
                        "reachable and copy data/steers.json here", code=1)
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(STEERS_REPO, STEERS_FILE, repo_type="dataset")
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            prompts = [json.loads(line)["prompt"] for line in handle if line.strip()]
    except Exception as exc:  # network, a renamed file or a changed format: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"could not read {STEERS_REPO}/{STEERS_FILE}: {first}", code=1) from None
    return [{"index": i, "question": q} for i, q in enumerate(steers_questions(prompts))]


def write_records(path: Path, records: list[dict]) -> None:
    """Write a benchmark file via a temporary sibling, so a failure leaves no partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"wrote {path}: {len(records)} questions, sha256 {digest}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write PAD's evaluation sets (P-Soups, HelpSteer2) as benchmark files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--psoups_from", type=Path, default=None, metavar="PATH",
                        help="a local copy of PAD's koala_eval_50.json (checked by sha256)")
    parser.add_argument("--steers", action="store_true",
                        help="HelpSteer2 validation prompts from the Hugging Face hub")
    parser.add_argument("--dest", type=Path, default=Path(__file__).resolve().parent,
                        help="where psoups.json and steers.json are written")
    args = parser.parse_args(argv)
    if args.psoups_from is None and not args.steers:
        parser.error("nothing to do: give --psoups_from PATH and/or --steers")
    try:
        if args.psoups_from is not None:
            write_records(args.dest / "psoups.json", read_psoups(args.psoups_from))
        if args.steers:
            write_records(args.dest / "steers.json", read_steers())
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
