"""The Python API behind main.py: plan the grid of runs, validate everything, load the model
once, decode batch by batch with resumable partial results, and write the final files."""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .eval_data import Dataset, Question, load_dataset
from .outputs import (
    PartialStore,
    check_writable,
    final_records,
    preference_slug,
    read_json,
    run_dir,
    write_json_atomic,
)
from .prompts import SYSTEM_PROMPT, preference_sentence

FINGERPRINT_VERSION = 1


@dataclass(frozen=True)
class PlannedRun:
    method: str
    pref_slug: str
    preference: str
    dataset: Dataset
    directory: Path

    @property
    def final_path(self) -> Path:
        return self.directory / f"{self.method}.json"

    @property
    def meta_path(self) -> Path:
        return self.directory / f"{self.method}.meta.json"

    def part_path(self, rank: int) -> Path:
        return self.directory / f"{self.method}.part{rank}.jsonl"


def method_parameters(config, method: str) -> dict:
    """The hyperparameters that change the tokens of `method` (for fingerprints and sidecars)."""
    if method == "beam":
        return {"num_beams": config.num_beams}
    if method == "la":
        return {"reinforce_ratio": config.reinforce_ratio}
    if method == "amulet":
        from .combine import amulet_ratio

        return {
            "iteration_num": config.iteration_num, "alpha": config.alpha,
            "player_lambda": config.player_lambda, "eta": config.eta,
            "amulet_solver": config.amulet_solver,
            "amulet_ratio": amulet_ratio(
                config.iteration_num, config.alpha, config.player_lambda, config.eta
            ),
        }
    return {}


def fingerprint(config, run: PlannedRun, model_short_name: str) -> dict:
    """Everything that changes the responses of a run; partial results must match it exactly."""
    sampling = (
        {"temperature": config.temperature, "top_p": config.top_p, "top_k": config.top_k}
        if config.do_sample else {}
    )
    return {
        "version": FINGERPRINT_VERSION,
        "model": config.model_name,
        "model_short_name": model_short_name,
        "dtype": config.dtype,
        "method": run.method,
        "system_prompt_sha256": hashlib.sha256(SYSTEM_PROMPT.encode()).hexdigest(),
        "preference": run.preference,
        "dataset": run.dataset.name,
        "dataset_sha256": run.dataset.sha256,
        "limit": config.limit,
        "max_new_tokens": config.max_new_tokens,
        "do_sample": config.do_sample,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "truncate_long_prompts": config.truncate_long_prompts,
        **sampling,
        **method_parameters(config, run.method),
    }


def plan_runs(config, model_short_name: str) -> list[PlannedRun]:
    data_dir = Path(config.data_dir)
    datasets = [load_dataset(data_dir, name, config.limit) for name in config.datasets]
    runs = []
    for pref_name in config.pref_names:
        slug = preference_slug(pref_name, config.pref_text)
        sentence = config.pref_text or preference_sentence(pref_name)
        for dataset in datasets:
            directory = run_dir(config.output_dir, slug, model_short_name, dataset.name)
            for method in config.methods:
                runs.append(PlannedRun(method, slug, sentence, dataset, directory))
    return runs


def is_complete(run: PlannedRun, expected: dict) -> bool:
    """A final file exists; warns when it was made under another configuration."""
    if not run.final_path.exists():
        return False
    meta = read_json(run.meta_path) or {}
    if meta.get("fingerprint") != expected:
        warnings.warn(
            f"{run.final_path} exists from a different configuration; left alone "
            "(pass --overwrite to replace it)", stacklevel=2,
        )
    return True


def batches_of(questions: tuple[Question, ...], prompt_lengths: list[int], size: int):
    """Fixed batches: questions sorted by prompt length (stable), cut into `size` chunks.

    They depend only on the dataset and the batch size, so a resumed or sharded run decodes
    exactly the batches an uninterrupted single-process run would.
    """
    order = sorted(range(len(questions)), key=lambda i: prompt_lengths[i])
    return [order[i: i + size] for i in range(0, len(order), size)]


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment_facts() -> dict:
    import torch
    import transformers

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }


def now() -> float:
    return time.perf_counter()


def seed_for_batch(seed: int, batch: int) -> int:
    """A per-batch seed, so sampled runs are reproducible whatever order batches run in."""
    return (seed * 1_000_003 + batch) % (2**63)


def encode_questions(tokenizer, questions, preference, system_role, context, config):
    """Prompt ids per question; over-long questions are refused, or cut from the left if asked."""
    from .prompts import encode_prompt

    encoded = []
    for q in questions:
        ids = encode_prompt(tokenizer, q.question, preference, system_role)
        excess = len(ids) + config.max_new_tokens - context if context else 0
        if excess > 0:
            if not config.truncate_long_prompts:
                raise UserError(
                    f"question index {q.index} needs {len(ids)} prompt tokens + "
                    f"{config.max_new_tokens} new tokens > the model's context {context}; "
                    "pass --truncate_long_prompts to cut it from the left, or lower "
                    "--max_new_tokens"
                )
            question_ids = tokenizer(q.question, add_special_tokens=False)["input_ids"]
            if excess >= len(question_ids):
                raise UserError(f"question index {q.index}: the prompt alone exceeds the context")
            cut = tokenizer.decode(question_ids[excess + 8:])  # margin for re-tokenisation
            ids = encode_prompt(tokenizer, cut, preference, system_role)
            if len(ids) + config.max_new_tokens > context:
                raise UserError(f"question index {q.index} could not be cut to fit the context")
            warnings.warn(f"question index {q.index} cut from the left by {excess + 8} tokens",
                          stacklevel=2)
        encoded.append(ids)
    return encoded


def run(config) -> list[Path]:
    """Run every (preference, dataset, method) of `config`; returns the final files written."""
    from .distributed import current_process
    from .loading import (
        eos_token_ids,
        load_model,
        load_tokenizer,
        pad_token_id,
        resolve_device,
        resolve_model,
    )
    from .prompts import template_accepts_system

    check_writable(config.output_dir)
    source = resolve_model(config.model_name)
    runs = plan_runs(config, source.short_name)
    todo = []
    for planned in runs:
        expected = fingerprint(config, planned, source.short_name)
        if config.overwrite or not is_complete(planned, expected):
            todo.append((planned, expected))
    skipped = len(runs) - len(todo)
    if skipped:
        print(f"{skipped} of {len(runs)} runs already complete: skipped", file=sys.stderr)
    if not todo:
        return []
    device = resolve_device(config.device)
    process = current_process(device)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    model = load_model(source, process.device or device, config.dtype, config.multi_gpu,
                       config.trust_remote_code)
    eos_ids = eos_token_ids(model, tokenizer)
    settings = decode_settings(config, eos_ids, pad_token_id(tokenizer, eos_ids))
    context = getattr(model.config, "max_position_embeddings", None)
    system_role = template_accepts_system(tokenizer)
    prompts = {}
    for planned, _ in todo:  # every prompt is encoded and checked before anything is written
        for preference in (planned.preference, ""):
            key = (preference, planned.dataset.name)
            if key not in prompts:
                prompts[key] = encode_questions(
                    tokenizer, planned.dataset.questions, preference, system_role, context, config
                )
    facts = environment_facts()
    written = []
    for number, (planned, expected) in enumerate(todo, 1):
        pref_ids = prompts[(planned.preference, planned.dataset.name)]
        base_ids = prompts[("", planned.dataset.name)]
        label = f"[{number}/{len(todo)}] {planned.method} {planned.pref_slug} "
        label += planned.dataset.name
        path = generate_run(config, planned, expected, model, tokenizer, settings, pref_ids,
                            base_ids, process, label, facts)
        if path is not None:
            written.append(path)
    return written


def decode_settings(config, eos_ids: list[int], pad_id: int):
    from .methods import DecodeSettings
    from .sampling import SamplingSettings

    sampling = SamplingSettings(config.do_sample, config.temperature, config.top_k, config.top_p)
    return DecodeSettings(
        max_new_tokens=config.max_new_tokens, eos_ids=eos_ids, pad_id=pad_id, sampling=sampling,
        num_beams=config.num_beams, reinforce_ratio=config.reinforce_ratio,
        iteration_num=config.iteration_num, alpha=config.alpha,
        player_lambda=config.player_lambda, eta=config.eta, amulet_solver=config.amulet_solver,
    )


def generate_run(config, planned, expected, model, tokenizer, settings, pref_ids, base_ids,
                 process, label, facts) -> Path | None:
    """Decode this rank's missing batches of one run; the main rank then assembles the file."""
    from tqdm import tqdm

    from .methods import METHOD_RUNNERS

    questions = planned.dataset.questions
    batches = batches_of(questions, [len(p) for p in pref_ids], config.batch_size)
    if config.overwrite and process.is_main:
        for part in planned.directory.glob(f"{planned.method}.part*.jsonl"):
            part.unlink()
    process.barrier()
    done = load_parts(planned, expected, process.rank)
    mine = [b for b in range(len(batches)) if b % process.world_size == process.rank
            and b not in done]
    own = PartialStore(planned.part_path(process.rank), expected)
    runner = METHOD_RUNNERS[planned.method]
    with tqdm(total=sum(len(batches[b]) for b in mine), desc=label, unit="q",
              disable=None, position=process.rank) as bar:
        for b in mine:
            rows = batches[b]
            started = now()
            outputs = runner(model, [pref_ids[i] for i in rows], [base_ids[i] for i in rows],
                             settings, seed_for_batch(config.seed, b))
            seconds = now() - started
            records = [
                {"index": questions[i].index, "question": questions[i].question,
                 "preference": planned.preference,
                 "response": decode_response(tokenizer, ids, settings.eos_ids)}
                for i, ids in zip(rows, outputs, strict=True)
            ]
            own.append(b, records, seconds=seconds, tokens=sum(len(ids) for ids in outputs))
            bar.update(len(rows))
    process.barrier()
    path = None
    if process.is_main:
        path = assemble(config, planned, expected, len(batches), facts)
    process.barrier()
    return path


def load_parts(planned: PlannedRun, expected: dict, rank: int) -> dict[int, dict]:
    """Finished batches from every rank's partial file (a resumed job may differ in size)."""
    done = {}
    for part in sorted(planned.directory.glob(f"{planned.method}.part*.jsonl")):
        repair = part == planned.part_path(rank)
        done.update(PartialStore(part, expected).load(repair=repair))
    return done


def assemble(config, planned, expected, n_batches: int, facts: dict) -> Path:
    entries = load_parts(planned, expected, rank=0)
    missing = sorted(set(range(n_batches)) - set(entries))
    if missing:
        raise UserError(
            f"{planned.final_path}: batches {missing[:10]} are missing (a rank stopped early?); "
            "rerun the same command to finish them"
        )
    ordered = [entries[b] for b in range(n_batches)]
    write_json_atomic(planned.final_path, final_records(ordered))
    seconds = sum(e.get("seconds", 0.0) for e in ordered)
    tokens = sum(e.get("tokens", 0) for e in ordered)
    meta = {
        "fingerprint": expected,
        "config": config.to_dict(),
        "questions": len(planned.dataset.questions),
        "generated_tokens": tokens,
        "decode_seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 3) if seconds else None,
        "environment": facts,
    }
    write_json_atomic(planned.meta_path, meta)
    for part in planned.directory.glob(f"{planned.method}.part*.jsonl"):
        part.unlink()
    print(f"wrote {planned.final_path}", file=sys.stderr)
    return planned.final_path


def decode_response(tokenizer, ids: list[int], eos_ids: list[int]) -> str:
    if ids and ids[-1] in eos_ids:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
