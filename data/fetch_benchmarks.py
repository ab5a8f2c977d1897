"""Fetch the paper's four benchmark files into data/ (or --dest), pinned by sha256.

With --verify DIR, check copies you already have instead. The files are not part of this
repository. Exit codes: 0 done, 2 bad flags or files that are missing or differ, 1 a failed
download.

    python data/fetch_benchmarks.py                       # download into data/
    python data/fetch_benchmarks.py --verify DIR          # check copies in DIR
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import urllib.request
from pathlib import Path

SOURCE = "https://raw.githubusercontent.com/zowiezhang/Amulet/main/data/{name}.json"
SHA256 = {
    "HelpSteer_train": "763aaf4e79964fe625750438e796163e3da1e479b203aba648b9e7b552f29e2c",
    "UltraFeedback_truthful_qa": "53841ba2db1b4de7cdf91b6297285e02c00079419410177a0e5a40821ff2cc94",
    "UltraFeedback_ultrachat": "f9b2b15c037bc3a864457d2e5374f0548452c7a407d6d200b5d9b6642b970f36",
    "personal_preference_eval_preference_data":
        "5324899dce5ed046df7d3e8f8ccb17bae0e151f2bc434bcb4c9444311245cf70",
}


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(directory: Path) -> list[str]:
    """Problems found with the benchmark files in `directory` (empty when all four match)."""
    problems = []
    for name, digest in SHA256.items():
        path = directory / f"{name}.json"
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256_of(path.read_bytes()) != digest:
            problems.append(f"{path}: sha256 differs from the published file")
    return problems


def fetch(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name, digest in SHA256.items():
        path = dest / f"{name}.json"
        if path.is_file() and sha256_of(path.read_bytes()) == digest:
            continue
        with urllib.request.urlopen(SOURCE.format(name=name), timeout=60) as response:
            data = response.read()
        if sha256_of(data) != digest:
            raise SystemExit(f"error: {name}: downloaded file does not match its pinned sha256")
        path.write_bytes(data)
        print(f"fetched {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Fetch the paper's four benchmark files (pinned by sha256), or check copies "
                    "you already have with --verify DIR.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--dest", type=Path, default=Path(__file__).resolve().parent,
                        help="where to write the files")
    parser.add_argument("--verify", type=Path, default=None, metavar="DIR",
                        help="only check the files in DIR against the pinned sha256")
    args = parser.parse_args(argv)
    if args.verify is not None:
        if not args.verify.is_dir():
            print(f"error: --verify {args.verify}: no such directory", file=sys.stderr)
            return 2
        problems = verify(args.verify)
        for line in problems:
            print(line, file=sys.stderr)
        if not problems:
            print(f"all {len(SHA256)} benchmark files in {args.verify} match")
        return 2 if problems else 0
    try:
        fetch(args.dest)
    except OSError as err:
        print(f"error: could not download the benchmark files ({err}); is this machine "
              "offline? Point --data_dir at copies instead.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
