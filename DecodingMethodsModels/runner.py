"""The Python API behind main.py: plan the grid of runs, validate everything, load the model
once, decode batch by batch with resumable partial results, and write the final files.

Order matters for the promises main.py makes: every input (output directory, model name,
datasets, partial files of an earlier configuration, prompt lengths) is checked before anything
is written, and the output directory before any weights are loaded.
"""

from __future__ import annotations

import hashlib
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .distributed import (
    Process,
    RankError,
    join,
    launched_process,
    leave,
    meet,
    rank_device,
    restrict_gpus,
)
from .errors import UserError
from .eval_data import Dataset, Question, load_dataset
from .outputs import (
    PartialStore,
    changed_settings,
    check_writable,
    describe_changes,
    final_records,
    preference_slug,
    read_json,
    run_dir,
    write_json_atomic,
)
from .prompts import SYSTEM_PROMPT, preference_sentence
from .provenance import software_facts

FINGERPRINT_VERSION = 2
POLL_SECONDS = 0.5  # how often rank 0 looks for the other ranks' batches


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

    def part_paths(self) -> list[Path]:
        return sorted(self.directory.glob(f"{self.method}.part*.jsonl"))

    @property
    def label(self) -> str:
        return f"{self.method} {self.pref_slug} {self.dataset.name}"


@dataclass
class Work:
    """One run as this rank sees it: the fixed batches, those already on disk, and its own.

    `kept` holds the records of a finished run of the same configuration with a smaller
    --limit: only the other questions are decoded, and the final file is extended.
    """

    run: PlannedRun
    expected: dict
    done: set[int]
    batches: list[list[int]] = field(default_factory=list)
    mine: list[int] = field(default_factory=list)
    kept: list[dict] = field(default_factory=list)

    @property
    def part_fingerprint(self) -> dict:
        """Partial files of an extension hold other batches than those of a fresh run."""
        if not self.kept:
            return self.expected
        return {**self.expected, "extends_records": len(self.kept)}

    def positions_to_decode(self) -> list[int]:
        kept = {r["index"] for r in self.kept}
        questions = self.run.dataset.questions
        return [i for i, q in enumerate(questions) if q.index not in kept]


@dataclass(frozen=True)
class Hardware:
    """What the device and dtype flags resolve to on this machine (they change the tokens)."""

    device_type: str
    dtype: str


def resolved_hardware(config) -> Hardware:
    from .loading import resolve_device, resolve_dtype

    device = "cuda" if config.multi_gpu else resolve_device(config.device)
    dtype = str(resolve_dtype(config.dtype, device)).removeprefix("torch.")
    return Hardware(device.split(":")[0], dtype)


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


def fingerprint(config, run: PlannedRun, model_short_name: str,
                hardware: Hardware | None = None) -> dict:
    """Everything that changes the responses of a run; partial results must match it exactly.

    The device type and dtype are recorded as resolved (`--dtype auto` is float32 on a CPU and
    bfloat16 on CUDA); the seed only when sampling, since greedy and beam runs ignore it.
    """
    hardware = hardware or resolved_hardware(config)
    sampling = (
        {"temperature": config.temperature, "top_p": config.top_p, "top_k": config.top_k,
         "seed": config.seed}
        if config.do_sample else {}
    )
    return {
        "version": FINGERPRINT_VERSION,
        "model": config.model_name,
        "model_short_name": model_short_name,
        "dtype": hardware.dtype,
        "device_type": hardware.device_type,
        "method": run.method,
        "system_prompt_sha256": hashlib.sha256(SYSTEM_PROMPT.encode()).hexdigest(),
        "reference_prompts": config.reference_prompts,
        "preference": run.preference,
        "dataset": run.dataset.name,
        "dataset_sha256": run.dataset.sha256,
        "limit": config.limit,
        "max_new_tokens": config.max_new_tokens,
        "do_sample": config.do_sample,
        "batch_size": config.batch_size,
        "truncate_long_prompts": config.truncate_long_prompts,
        "repetition_penalty": config.repetition_penalty,
        "no_repeat_ngram_size": config.no_repeat_ngram_size,
        "use_model_generation_config": config.use_model_generation_config,
        **sampling,
        **method_parameters(config, run.method),
    }


def plan_runs(config, model_short_name: str) -> list[PlannedRun]:
    """Every (preference, dataset, method) of the grid, in that nesting; datasets validated."""
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


def finished_records(run: PlannedRun, expected: dict) -> list[dict] | None:
    """The records of an earlier finished run that this one can use, or None if there is none.

    Same configuration: all of them. Same but for a smaller --limit: those, and the caller
    decodes the rest. Any other difference is refused, naming the settings, so that a file of
    other settings is never taken for this run's.
    """
    if not run.final_path.exists():
        return None
    stored = (read_json(run.meta_path) or {}).get("fingerprint")
    if not isinstance(stored, dict):
        raise UserError(f"{run.final_path} exists without a readable sidecar "
                        f"{run.meta_path.name}, so its settings are unknown; pass --overwrite "
                        "to replace it, or choose another --output_dir")
    changed = changed_settings(stored, expected)
    if changed and changed != ["limit"]:
        raise UserError(f"{run.final_path} was made with other settings "
                        f"({describe_changes(stored, expected)}); pass --overwrite to replace "
                        "it, or choose another --output_dir")
    records = read_json(run.final_path)
    if not isinstance(records, list):
        raise UserError(f"{run.final_path} is not a list of records; pass --overwrite to redo it")
    wanted = {q.index for q in run.dataset.questions}
    return [r for r in records if isinstance(r, dict) and r.get("index") in wanted]


def select_todo(config, runs: list[PlannedRun], short_name: str) -> tuple[list[Work], int]:
    """The runs to do, with the batches already on disk; refuses finished and partial files of
    another configuration now, before any model is loaded. Returns (work, number complete)."""
    hardware = resolved_hardware(config)
    todo, complete = [], 0
    for planned in runs:
        expected = fingerprint(config, planned, short_name, hardware)
        if config.overwrite:
            todo.append(Work(planned, expected, set()))
            continue
        kept = finished_records(planned, expected)
        if kept is not None and len(kept) == len(planned.dataset.questions):
            complete += 1
            continue
        work = Work(planned, expected, set(), kept=kept or [])
        for part in planned.part_paths():
            work.done |= set(PartialStore(part, work.part_fingerprint).load())
        todo.append(work)
    return todo, complete


def batches_of(questions: tuple[Question, ...], prompt_lengths: list[int], size: int,
               positions: list[int] | None = None):
    """Fixed batches: questions (all, or those at `positions`) sorted by prompt length (stable),
    cut into `size` chunks.

    They depend only on the dataset and the batch size, so a resumed or sharded run decodes
    exactly the batches an uninterrupted single-process run would.
    """
    candidates = range(len(questions)) if positions is None else positions
    order = sorted(candidates, key=lambda i: prompt_lengths[i])
    return [order[i: i + size] for i in range(0, len(order), size)]


def environment_facts(process: Process, device: str, model) -> dict:
    """Versions and hardware facts for the sidecar; deliberately no environment variables."""
    return {
        **software_facts(),
        "world_size": process.world_size,
        "device": device,
        "model_dtype": str(model.dtype).removeprefix("torch."),
    }


def now() -> float:
    return time.perf_counter()


def seed_for_batch(seed: int, batch: int) -> int:
    """A per-batch seed, so sampled runs are reproducible whatever order batches run in."""
    return (seed * 1_000_003 + batch) % (2**63)


def encode_questions(tokenizer, dataset: Dataset, preference: str, system_role: bool,
                     context: int | None, config) -> tuple[list[list[int]], list[list[int]]]:
    """(preference prompt ids, base prompt ids) per question, both built from the same question
    text. A question too long for the context is refused, or, if asked, cut from the left once
    so that the longer of its two prompts fits, and both prompts are built from that cut text:
    LA and Amulet then contrast two prompts about the same question."""
    from .prompts import encode_prompt

    def encode(question: str) -> tuple[list[int], list[int]]:
        return tuple(
            encode_prompt(tokenizer, question, sentence, system_role,
                          reference=config.reference_prompts)
            for sentence in (preference, "")
        )

    pref_prompts, base_prompts = [], []
    for q in dataset.questions:
        pref, base = encode(q.question)
        longest = max(len(pref), len(base))
        excess = longest + config.max_new_tokens - context if context else 0
        where = f"{dataset.path}: question index {q.index}"
        if excess > 0:
            if not config.truncate_long_prompts:
                raise UserError(
                    f"{where} needs {longest} prompt tokens + {config.max_new_tokens} new tokens"
                    f", more than the model's context of {context}; pass --truncate_long_prompts "
                    "to cut it from the left, or lower --max_new_tokens"
                )
            question_ids = tokenizer(q.question, add_special_tokens=False)["input_ids"]
            if excess >= len(question_ids):
                raise UserError(f"{where}: the prompt without the question already exceeds the "
                                f"model's context of {context}; lower --max_new_tokens")
            cut = tokenizer.decode(question_ids[excess + 8:])  # margin for re-tokenisation
            pref, base = encode(cut)
            if max(len(pref), len(base)) + config.max_new_tokens > context:
                raise UserError(f"{where} could not be cut to fit the model's context")
            warnings.warn(f"{where} cut from the left by {excess + 8} tokens to fit the "
                          f"model's context of {context}", stacklevel=2)
        pref_prompts.append(pref)
        base_prompts.append(base)
    return pref_prompts, base_prompts


def check_model_source(source) -> None:
    """A local directory must hold a model: say so before any loading is tried."""
    if source.gguf_file is None and Path(source.path).is_dir():
        if not (Path(source.path) / "config.json").is_file():
            raise UserError(f"{source.path} is a directory without a model in it (no "
                            "config.json): give a model directory, a .gguf file or a hub id")


def encode_all(todo: list[Work], tokenizer, system_role: bool, context: int | None,
               config) -> dict[tuple[str, str], tuple[list[list[int]], list[list[int]]]]:
    """(preference ids, base ids) of every (preference, dataset) the runs need."""
    prompts = {}
    for work in todo:
        key = (work.run.preference, work.run.dataset.name)
        if key not in prompts:
            prompts[key] = encode_questions(
                tokenizer, work.run.dataset, work.run.preference, system_role, context, config
            )
    return prompts


def model_context(model_config) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def configured_context(source, trust_remote_code: bool) -> int | None:
    """The model's context length from its configuration alone, before any weight is loaded
    (None if the configuration cannot be read that way: then it is taken from the model)."""
    from transformers import AutoConfig

    from .loading import conversion_cache

    where = source.path
    if source.gguf_file:
        where = conversion_cache(source, "model")
        if where is None or not where.is_dir():
            return None  # reading a GGUF's configuration costs seconds: check after loading
    try:
        model_config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError):
        return None
    return model_context(model_config)


@dataclass
class Decoder:
    """The loaded model and all it needs to turn one batch of one run into records."""

    model: object
    tokenizer: object
    prompts: dict[tuple[str, str], tuple[list[list[int]], list[list[int]]]]
    settings: object
    eos_ids: list[int]
    seed: int

    def __call__(self, work: Work, batch: int) -> tuple[list[dict], int]:
        """(records of the batch, generated tokens)."""
        from .engine import NonFiniteScoresError
        from .methods import METHOD_RUNNERS

        rows = work.batches[batch]
        pref_ids, base_ids = self.prompts[(work.run.preference, work.run.dataset.name)]
        try:
            outputs = METHOD_RUNNERS[work.run.method](
                self.model, [pref_ids[i] for i in rows], [base_ids[i] for i in rows],
                self.settings, seed_for_batch(self.seed, batch),
            )
        except NonFiniteScoresError as err:
            raise RankError(nan_message(work, batch, self.model, err)) from None
        questions = work.run.dataset.questions
        records = [
            {"index": questions[i].index, "question": questions[i].question,
             "preference": work.run.preference,
             "response": decode_response(self.tokenizer, ids, self.eos_ids)}
            for i, ids in zip(rows, outputs, strict=True)
        ]
        return records, sum(len(ids) for ids in outputs)


def run(config) -> list[Path]:
    """Run every (preference, dataset, method) of `config`; returns the final files written.

    Under torchrun / accelerate launch every rank calls this; rank 0 returns the files.
    """
    process = launched_process()
    todo = plan_work(config, process)
    if not todo:
        return []
    decoder, facts = load_and_check(config, process, todo)
    join(process)
    try:
        meet(process, Path(config.output_dir), lambda: clear_for_rerun(todo, config.overwrite))
        return decode_all(config, todo, process, decoder, facts)
    finally:
        leave(process)


def plan_work(config, process: Process) -> list[Work]:
    """Validate what needs no model (output directory, model name, datasets, partial files)
    and list the runs left to do."""
    from .loading import resolve_model

    check_writable(config.output_dir)
    source = resolve_model(config.model_name)
    check_model_source(source)
    runs = plan_runs(config, source.short_name)
    todo, complete = select_todo(config, runs, source.short_name)
    if complete:
        _printer(process)(f"{complete} of {len(runs)} runs already complete: skipped")
    return todo


def load_and_check(config, process: Process, todo: list[Work]) -> tuple[Decoder, dict]:
    """Tokenizer, every prompt checked against the context, then the model; fixes each run's
    batches and this rank's share of them."""
    from .loading import (
        eos_token_ids,
        load_model,
        load_tokenizer,
        pad_token_id,
        resolve_device,
        resolve_model,
    )
    from .prompts import template_accepts_system

    if not process.is_main:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    source = resolve_model(config.model_name)
    restrict_gpus(process, config.multi_gpu, config.device)
    device = rank_device(resolve_device(config.device), process, config.multi_gpu)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    system_role = template_accepts_system(tokenizer)
    # every prompt is encoded and checked before anything is written or any weight loaded
    context = configured_context(source, config.trust_remote_code)
    prompts = encode_all(todo, tokenizer, system_role, context, config)
    model = load_model(source, device, config.dtype, config.multi_gpu, config.trust_remote_code)
    if context is None and model_context(model.config) is not None:
        prompts = encode_all(todo, tokenizer, system_role, model_context(model.config), config)
    for work in todo:
        pref_ids, _ = prompts[(work.run.preference, work.run.dataset.name)]
        positions = work.positions_to_decode() if work.kept else None
        work.batches = batches_of(work.run.dataset.questions, [len(p) for p in pref_ids],
                                  config.batch_size, positions)
        work.mine = [b for b in range(len(work.batches)) if process.owns(b) and b not in work.done]
    eos_ids = eos_token_ids(model, tokenizer)
    penalties, generation_facts = resolve_penalties(config, model)
    settings = decode_settings(config, eos_ids, pad_token_id(tokenizer, eos_ids), penalties)
    decoder = Decoder(model, tokenizer, prompts, settings, eos_ids, config.seed)
    return decoder, {**environment_facts(process, device, model), **generation_facts}


def resolve_penalties(config, model):
    """The penalties every method applies, and what the checkpoint's generation config set.

    By default none of the checkpoint's settings reach any method (a warning names them);
    with --use_model_generation_config its repetition penalty and n-gram ban fill what the
    command line left unset, for every method alike.
    """
    from .methods import checkpoint_generation_settings
    from .penalties import Penalties

    own = checkpoint_generation_settings(model)
    adopt = config.use_model_generation_config
    penalty = config.repetition_penalty
    ngram = config.no_repeat_ngram_size
    if adopt:
        penalty = own.get("repetition_penalty") if penalty is None else penalty
        ngram = own.get("no_repeat_ngram_size") if ngram is None else ngram
    penalties = Penalties(1.0 if penalty is None else float(penalty), int(ngram or 0))
    applied = {"repetition_penalty", "no_repeat_ngram_size"} if adopt else set()
    ignored = {k: v for k, v in own.items() if k not in applied}
    if ignored:
        listed = ", ".join(f"{k}={v}" for k, v in sorted(ignored.items()))
        hint = ("" if adopt else "; --use_model_generation_config applies its repetition "
                "penalty and n-gram ban to every method")
        warnings.warn(f"the checkpoint's generation config sets {listed}: no method uses "
                      f"{'these' if adopt else 'them'} (every method decodes with the command "
                      f"line's settings){hint}", stacklevel=2)
    facts = {"generation": {
        "repetition_penalty": penalties.repetition_penalty,
        "no_repeat_ngram_size": penalties.no_repeat_ngram_size,
        "checkpoint_generation_config": own,
        "checkpoint_settings_applied": sorted(applied & set(own)),
    }}
    return penalties, facts


def nan_message(work: Work, batch: int, model, err: Exception) -> str:
    import torch

    indices = [work.run.dataset.questions[i].index for i in work.batches[batch]]
    hint = ("the weights themselves give NaN" if model.dtype == torch.float32
            else "try --dtype float32")
    return (f"{work.run.label}: the scores became NaN in batch {batch} (question indices "
            f"{indices}): {err}; {hint}")


def clear_for_rerun(todo: list[Work], overwrite: bool) -> None:
    """With --overwrite, remove each run's final file, sidecar and partial files first, so an
    interrupted overwrite resumes (without --overwrite) instead of keeping the old final file."""
    if not overwrite:
        return
    for work in todo:
        for path in [work.run.final_path, work.run.meta_path, *work.run.part_paths()]:
            path.unlink(missing_ok=True)


def decode_all(config, todo: list[Work], process: Process, decoder: Decoder,
               facts: dict) -> list[Path]:
    """This rank's batches of every run, under one progress bar (rank 0's share of the work);
    rank 0 assembles each run as soon as all its batches are on disk."""
    from tqdm import tqdm

    total = sum(len(w.batches[b]) for w in todo for b in w.mine)
    share = f" (rank 0's share of {process.world_size})" if process.is_distributed else ""
    written, pending = [], []
    with tqdm(total=total, unit="q", desc=f"all runs{share}", dynamic_ncols=True,
              disable=None if process.is_main else True) as bar:
        say = _printer(process, bar)
        for number, work in enumerate(todo, 1):
            left = sum(len(work.batches[b]) for b in work.mine)
            questions = len(work.run.dataset.questions)
            say(f"[{number}/{len(todo)}] {work.run.label}: {left} of {questions} questions "
                f"to decode{' here' if process.is_distributed else ''}")
            bar.set_description(f"[{number}/{len(todo)}] {work.run.label}")
            decode_share(config, work, process, decoder, bar)
            if process.is_main:
                pending.append(work)
                written += assemble_ready(config, pending, facts, say)
        if process.is_main:
            written += wait_for_ranks(config, pending, facts, say, process)
    return written


def decode_share(config, work: Work, process: Process, decoder: Decoder, bar) -> None:
    """Decode this rank's missing batches of one run, each appended to disk when finished."""
    if not work.mine:
        return
    store = PartialStore(work.run.part_path(process.rank), work.part_fingerprint,
                         config.to_dict())
    try:
        for b in work.mine:
            started = now()
            records, tokens = decoder(work, b)
            store.append(b, records, seconds=round(now() - started, 4), tokens=tokens)
            bar.update(len(records))
    finally:
        store.close()


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
            say(f"wrote {work.run.final_path}")
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
        "environment": {k: v for k, v in facts.items() if k != "generation"},
    }
    # the sidecar first: a final file without its sidecar would look like another config's
    write_json_atomic(planned.meta_path, meta)
    write_json_atomic(planned.final_path, final_records([{"records": work.kept}, *ordered]))
    for part in planned.part_paths():
        part.unlink(missing_ok=True)
    return planned.final_path


def decode_settings(config, eos_ids: list[int], pad_id: int, penalties=None):
    from .methods import DecodeSettings
    from .penalties import Penalties
    from .sampling import SamplingSettings

    sampling = SamplingSettings(config.do_sample, config.temperature, config.top_k, config.top_p)
    return DecodeSettings(
        max_new_tokens=config.max_new_tokens, eos_ids=eos_ids, pad_id=pad_id, sampling=sampling,
        penalties=penalties or Penalties(),
        num_beams=config.num_beams, reinforce_ratio=config.reinforce_ratio,
        iteration_num=config.iteration_num, alpha=config.alpha,
        player_lambda=config.player_lambda, eta=config.eta, amulet_solver=config.amulet_solver,
    )


def decode_response(tokenizer, ids: list[int], eos_ids: list[int]) -> str:
    if ids and ids[-1] in eos_ids:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def _printer(process: Process, bar=None) -> Callable[[str], None]:
    """Rank 0's messages on stderr (through the progress bar, when there is one)."""
    def say(message: str) -> None:
        if not process.is_main:
            return
        if bar is not None:
            bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    return say
