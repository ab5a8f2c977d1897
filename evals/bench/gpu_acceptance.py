"""The vLLM backend's acceptance check on a GPU, one command (never part of CI):

    python evals/bench/gpu_acceptance.py                      # one GPU, the embedded model
    python evals/bench/gpu_acceptance.py --device cpu --quick # the same checks, tiny, on CPU

Every check runs what a user runs (`main.py` processes, vLLM's server) and the table says
what held:

- greedy la, amulet, implicit PAD and beam on vLLM against the hf backend on the same
  questions: answers equal, and the token agreement (the share of each answer's tokens, from
  its start, that both backends wrote; 1.0 is equal) where they are not. float32 by default;
  `--dtype bfloat16` where vLLM's GPU attention refuses float32 (near-ties then flip, so the
  agreement is the measure);
- sampled pairs (la, amulet): the same answers with 4 rows and with 16 rows in flight (each
  question draws from its own seed);
- async scheduling as shipped: the sidecar records vLLM's engine with async scheduling off;
- the server: a bad pair spec gets a 400 and the server then serves a valid pair, whose answers
  are the hf backend's.

It exits 1 when a check fails. On one H100 the full run is meant to take under 8 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QUESTIONS = [
    "Why is the sky blue?", "How do vaccines work?", "Give me three tips for sleeping better.",
    "What is the difference between weather and climate?", "Explain recursion to a child.",
    "Write a haiku about autumn.", "How do I make a cup of green tea?",
    "What causes the seasons on Earth?", "Name three uses of baking soda.",
    "Why do cats purr?", "How does a bicycle stay upright?", "What is a prime number?",
    "Suggest a name for a small bakery.", "How can I learn to juggle?",
    "What is the tallest mountain in Africa?", "Describe a rainy city at night.",
]
GREEDY = ("la", "amulet", "beam", "pad")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--model_name", default=None, help="default: the embedded model")
    parser.add_argument("--quick", action="store_true",
                        help="2 questions, 4 new tokens, 2 beams (a smoke run, e.g. on CPU)")
    parser.add_argument("--out", default=None, help="JSON report (default: none)")
    args = parser.parse_args(argv)
    args.questions, args.tokens, args.beams = (2, 4, 2) if args.quick else (16, 64, 4)
    return args


def main_command(args, out: Path, data: Path, backend: str, method: str, *extra) -> list[str]:
    command = [sys.executable, str(ROOT / "main.py"), "--backend", backend, "--method", method,
               "--data_dir", str(data), "--eval_data", "acceptance", "--pref_name", "creative",
               "--limit", str(args.questions), "--max_new_tokens", str(args.tokens),
               "--batch_size", "16", "--num_beams", str(args.beams), "--device", args.device,
               "--dtype", args.dtype, "--output_dir", str(out), "--overwrite", *extra]
    if args.model_name:
        command += ["--model_name", args.model_name]
    return command


def run(command: list[str]) -> tuple[bool, str]:
    """(finished, the last stderr line) of one process."""
    done = subprocess.run(command, capture_output=True, text=True, cwd=str(ROOT))
    lines = done.stderr.strip().splitlines() or ["(no output)"]
    return done.returncode == 0, lines[-1]


def records(out: Path, method: str) -> tuple[list[dict], dict]:
    final = next(out.rglob(f"{method}.json"))
    return (json.loads(final.read_text()),
            json.loads(final.with_name(f"{method}.meta.json").read_text()))


def agreement(tokenizer, ours: list[str], theirs: list[str]) -> tuple[int, float]:
    """(answers equal, mean share of tokens agreeing from the start: common prefix / longer)."""
    shares = []
    for a, b in zip(ours, theirs, strict=True):
        x, y = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in (a, b))
        pairs = enumerate(zip(x, y, strict=False))  # the shorter one's length at most
        common = next((i for i, (p, q) in pairs if p != q), min(len(x), len(y)))
        shares.append(common / max(len(x), len(y), 1))
    equal = sum(a == b for a, b in zip(ours, theirs, strict=True))
    return equal, sum(shares) / len(shares)


def greedy_checks(args, tokenizer, work: Path, data: Path) -> tuple[list[dict], dict]:
    """hf against vLLM for every greedy method; also returns the hf answers by method."""
    rows, answers = [], {}
    hf, vllm = work / "hf", work / "vllm"
    for backend, out in (("hf", hf), ("vllm", vllm)):
        for methods, extra in (("la,amulet,beam", ()), ("pad", ("--rm_name", "self"))):
            ok, last = run(main_command(args, out, data, backend, methods, *extra))
            if not ok:
                return [row(f"greedy {methods} ({backend})", False, last)], answers
    for method in GREEDY:
        want = [r["response"] for r in records(hf, method)[0]]
        got, meta = records(vllm, method)
        equal, share = agreement(tokenizer, [r["response"] for r in got], want)
        answers[method] = want
        exact = args.dtype == "float32"
        rows.append(row(f"greedy {method}: vLLM = hf ({args.dtype})",
                        equal == len(want) if exact else share >= 0.5,
                        f"{equal}/{len(want)} equal, token agreement {share:.3f}"))
    async_on = records(vllm, "la")[1]["environment"]["backend"].get("async_scheduling")
    rows.append(row("async scheduling as shipped (off)", async_on is False,
                    f"sidecar async_scheduling = {async_on}"))
    return rows, answers


def sampled_check(args, work: Path, data: Path) -> dict:
    found = []
    for seqs in (4, 16):
        out = work / f"sampled_{seqs}"
        ok, last = run(main_command(args, out, data, "vllm", "la,amulet", "--do_sample",
                                    "--vllm_max_num_seqs", str(seqs)))
        if not ok:
            return row("sampled la, amulet: same answers at 4 and 16 rows", False, last)
        found.append([r["response"] for m in ("la", "amulet") for r in records(out, m)[0]])
    same = sum(a == b for a, b in zip(*found, strict=True))
    return row("sampled la, amulet: same answers at 4 and 16 rows", same == len(found[0]),
               f"{same}/{len(found[0])} equal")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_check(args, tokenizer, source_folder: str, want: list[str]) -> list[dict]:
    """A bad spec gets a 400, then a valid la pair is served with the hf backend's answers."""
    from DecodingMethodsModels.backends.vllm_server import server_command
    from DecodingMethodsModels.library.vllm_server_client import PairClient, PairRule, complete
    from DecodingMethodsModels.models.loading import generation_eos_ids
    from DecodingMethodsModels.pipeline.decode import decode_response
    from DecodingMethodsModels.prompts.amulet import (
        encode_prompt,
        preference_sentence,
        template_accepts_system,
    )

    port = free_port()
    command, env = server_command(source_folder, port, max_num_seqs=16, max_model_len=1024,
                                  dtype=args.dtype, on_cpu=args.device == "cpu",
                                  kv_cache_bytes=256 * 2**20 if args.device == "cpu" else None)
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        if not wait_healthy(url, process, timeout=600):
            return [row("server starts", False, f"see {log.name}")]
        system_role = template_accepts_system(tokenizer)
        questions = QUESTIONS[: args.questions]
        pref = [encode_prompt(tokenizer, q, preference_sentence("creative"), system_role)
                for q in questions]
        base = [encode_prompt(tokenizer, q, "", system_role) for q in questions]
        bad = {"dmm": json.dumps({"pair": "x", "role": "pref", "rule": "no_such_rule",
                                  "params": {}, "sentinel": 0, "unusable": 1})}
        try:
            complete(url, source_folder, pref[0], bad, 2, [0], 60)
            rows = [row("server: a bad spec gets a 400", False, "accepted")]
        except Exception as err:  # noqa: BLE001 - the answer itself is the check
            rows = [row("server: a bad spec gets a 400", "(400)" in str(err), str(err)[:90])]
        eos = generation_eos_ids(_generation_config(source_folder), tokenizer)
        sentinels = _sentinels(tokenizer, source_folder, eos)
        client = PairClient(url, source_folder, PairRule("la", {"ratio": 2.0}), args.tokens,
                            eos, sentinels)
        ids = client.decode(pref, base)
        got = [decode_response(tokenizer, [t for t in row_ids if t not in sentinels], eos)
               for row_ids in ids]
        equal = sum(a == b for a, b in zip(got, want, strict=True))
        rows.append(row("server: then serves la = hf", equal == len(want),
                        f"{equal}/{len(want)} equal, {sum(client.resends)} re-sends"))
        return rows
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=60)


def wait_healthy(url: str, process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5):
                return True
        except (urllib.error.URLError, OSError):
            time.sleep(2)
    return False


def _generation_config(folder: str):
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(folder)
    except OSError:
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(folder))


def _sentinels(tokenizer, folder: str, eos: list[int]) -> tuple[int, int]:
    """The pair's two sentinels, chosen as the driver chooses them (never an EOS id)."""
    from transformers import AutoConfig

    from DecodingMethodsModels.backends.vllm_pair_spec import choose_sentinels

    named = {getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "pad", "unk")}
    return choose_sentinels(AutoConfig.from_pretrained(folder).vocab_size, len(tokenizer),
                            tokenizer.all_special_ids,
                            {*eos, *(i for i in named if isinstance(i, int))})


def row(check: str, passed: bool, detail: str) -> dict:
    return {"check": check, "passed": bool(passed), "detail": detail}


def table(rows: list[dict]) -> str:
    lines = ["| check | holds | detail |", "|---|---|---|"]
    lines += [f"| {r['check']} | {'yes' if r['passed'] else 'NO'} | {r['detail']} |"
              for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from DecodingMethodsModels.backends.vllm_backend import model_folder
    from DecodingMethodsModels.models.loading import (
        EMBEDDED_MODEL,
        load_model,
        load_tokenizer,
        resolve_model,
    )

    started = time.monotonic()
    source = resolve_model(args.model_name or EMBEDDED_MODEL)
    tokenizer = load_tokenizer(source)
    folder = model_folder(source, tokenizer, lambda: load_model(source, "cpu", "float32"))
    with tempfile.TemporaryDirectory(prefix="gpu_acceptance_") as tmp:
        work = Path(tmp)
        data = work / "data"
        data.mkdir()
        (data / "acceptance.json").write_text(json.dumps(
            [{"index": i, "question": q} for i, q in enumerate(QUESTIONS)]))
        rows, answers = greedy_checks(args, tokenizer, work, data)
        rows.append(sampled_check(args, work, data))
        if "la" in answers:
            rows += server_check(args, tokenizer, folder, answers["la"])
    minutes = (time.monotonic() - started) / 60
    print(f"vLLM acceptance on {args.device} ({args.dtype}), {args.questions} questions, "
          f"{args.tokens} new tokens, {minutes:.1f} min\n")
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": vars(args), "rows": rows,
                                              "minutes": minutes}, indent=1))
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
