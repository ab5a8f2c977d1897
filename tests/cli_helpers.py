"""Helpers shared by the generation CLI tests (resume, bad inputs, secrets, distributed, grid).

Runs main.py, or torchrun over it, in subprocesses with a clean, offline, single-threaded
environment (one thread per process: a loaded 2-core machine runs tiny models many times
faster so, and greedy outputs then match between 1 and N processes by construction).
Not a test module: nothing here is collected.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
TIMEOUT = 180  # seconds for any one subprocess: a hang fails the test instead of the suite
LAUNCHER_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT", "TORCHELASTIC_RUN_ID", "GROUP_RANK", "ROLE_RANK")

QUESTIONS = [
    "What happens if you eat watermelon seeds?",
    "How can I stay focused while working from home?",
    "Explain why the sky is blue to a ten-year-old.",
    "Write a short poem about autumn rain.",
    "What are three good habits for saving money?",
    "Is it safe to charge my phone overnight?",
    "Suggest a name for a coffee shop run by cats.",
    "What is the difference between weather and climate?",
    "How do I politely decline a meeting invitation?",
    "Give me a quick recipe for a vegetarian dinner.",
    "Why do cats purr?",
    "How should I prepare for my first marathon?",
]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONDONTWRITEBYTECODE="1",
               AMULET_CACHE_DIR="off")
    env.update(extra)
    return env


def main_cmd(args: list[str]) -> list[str]:
    return [PYTHON, str(ROOT / "main.py"), *args]


def torchrun_cmd(n: int, args: list[str]) -> list[str]:
    return [TORCHRUN, "--standalone", "--nproc_per_node", str(n), str(ROOT / "main.py"), *args]


def main_in_process(args: list[str]) -> tuple[int, str]:
    """main.main(args) in this process, one torch thread like the subprocesses: (code, stderr)."""
    import torch

    import main as cli

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = cli.main(args)
    finally:
        torch.set_num_threads(threads)
    return code, err.getvalue()


def run_cmd(cmd: list[str], env: dict | None = None, timeout: float = TIMEOUT):
    return subprocess.run(cmd, cwd=ROOT, env=env or cli_env(), capture_output=True, text=True,
                          timeout=timeout)


def run_main(args: list[str], env: dict | None = None, timeout: float = TIMEOUT):
    return run_cmd(main_cmd(args), env, timeout)


def start(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=env or cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s; stderr:\n{err}") from None
    return proc.returncode, out, err


def batch_lines(path: Path) -> int:
    """Finished batches in a partial file: complete lines after the header."""
    try:
        return max(path.read_bytes().count(b"\n") - 1, 0)
    except FileNotFoundError:
        return 0


def wait_for_batches(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll until `path` holds at least `n` finished batches (the process must still run)."""
    deadline = time.monotonic() + timeout
    while batch_lines(path) < n:
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {n} batches: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {n} batches in {path} after {timeout} s")
        time.sleep(0.002)


def tree_state(*roots: Path) -> dict[str, tuple[str, int]]:
    """Every file and directory under `roots`: content hash (or 'dir') and mtime_ns."""
    state = {}
    for root in roots:
        if not root.exists():
            continue
        for path in [root, *sorted(root.rglob("*"))]:
            stat = path.lstat()
            kind = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
            state[str(path)] = (kind, stat.st_mtime_ns)
    return state


def write_json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    return path


def write_dataset(data_dir: Path, name: str, questions: list[str]) -> Path:
    return write_json(data_dir / f"{name}.json",
                      [{"index": i, "question": q} for i, q in enumerate(questions)])


# What real checkpoints ship in generation_config.json (Qwen2-7B-Instruct ships a repetition
# penalty and sampling defaults): a model with these must decode as if it had none.
OPINIONATED_GENERATION = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
                          "repetition_penalty": 1.5, "no_repeat_ngram_size": 3}


def build_variant(tiny_dir: Path, out: Path, initializer_range: float = 0.3,
                  nan: bool = False, generation: dict | None = None) -> Path:
    """A tiny model re-initialised from `tiny_dir`'s config and tokenizer.

    initializer_range 0.3 (instead of 0.02) makes greedy answers differ between questions, so
    a record written under the wrong question or batch shows in a byte comparison. `nan`
    poisons the final norm: every logit is NaN. `generation` goes into the checkpoint's own
    generation config; the weights do not depend on it.
    """
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_dir)
    config.initializer_range = initializer_range
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = [2]
    model.generation_config.pad_token_id = 2
    for key, value in (generation or {}).items():
        setattr(model.generation_config, key, value)
    if nan:
        with torch.no_grad():
            model.model.norm.weight.fill_(float("nan"))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for item in tiny_dir.iterdir():
        if item.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(item, tmp / item.name)
    tmp.rename(out)
    return out


def shared_dir(tmp_path_factory, name: str) -> Path:
    """A directory shared by every test module of the session (built once, then reused)."""
    return tmp_path_factory.getbasetemp() / name


def sensitive_model(tmp_path_factory, tiny_model_dirs) -> Path:
    return build_variant(tiny_model_dirs["llama"], shared_dir(tmp_path_factory, "tiny-sensitive"))


def opinionated_model(tmp_path_factory, tiny_model_dirs) -> Path:
    """The sensitive model's weights with OPINIONATED_GENERATION in its generation config."""
    return build_variant(tiny_model_dirs["llama"],
                         shared_dir(tmp_path_factory, "tiny-opinionated"),
                         generation=OPINIONATED_GENERATION)


def classifier_model(tmp_path_factory, tiny_model_dirs) -> Path:
    """A tiny LlamaForSequenceClassification (a reward model's layout: no LM head) with the
    tiny models' tokenizer, as a user might pass one as --model_name by mistake."""
    out = shared_dir(tmp_path_factory, "tiny-reward-model")
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoConfig, LlamaForSequenceClassification

    tiny_dir = tiny_model_dirs["llama"]
    config = AutoConfig.from_pretrained(tiny_dir)
    config.num_labels = 1
    torch.manual_seed(0)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    LlamaForSequenceClassification(config).save_pretrained(tmp)
    for item in tiny_dir.iterdir():
        if item.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(item, tmp / item.name)
    tmp.rename(out)
    return out


def demo_data(tmp_path_factory) -> Path:
    data = shared_dir(tmp_path_factory, "cli-data")
    if not (data / "demo.json").is_file():
        write_dataset(data, "demo", QUESTIONS)
    return data


def gen_args(model: Path, data: Path, out: Path, *extra: str, method: str = "amulet",
             max_new_tokens: int = 16, batch_size: int = 2) -> list[str]:
    return ["--model_name", str(model), "--data_dir", str(data), "--output_dir", str(out),
            "--eval_data", "demo", "--method", method, "--max_new_tokens", str(max_new_tokens),
            "--batch_size", str(batch_size), "--device", "cpu", *extra]


def run_files(out: Path, model: Path, method: str = "amulet", pref: str = "creative",
              dataset: str = "demo") -> tuple[Path, Path]:
    """(final file, directory) of one run under `out`."""
    directory = out / pref / model.name / dataset
    return directory / f"{method}.json", directory


def reference_output(tmp_path_factory, model: Path, data: Path, **kwargs) -> bytes:
    """The final file of an uninterrupted single-process run, computed once per session."""
    key = hashlib.sha256(json.dumps([str(model), str(data), kwargs], sort_keys=True).encode())
    out = shared_dir(tmp_path_factory, f"reference-{key.hexdigest()[:12]}")
    final, _ = run_files(out, model, kwargs.get("method", "amulet"))
    if not final.is_file():
        code, err = main_in_process(gen_args(model, data, out, **kwargs))
        assert code == 0, err
    return final.read_bytes()
