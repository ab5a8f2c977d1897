"""Stage 1 of a run: the grid of (preference, dataset, method) runs, the fingerprint of the
settings that change each run's tokens, what earlier finished and partial files already hold,
and the fixed batches every process agrees on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.pipeline.eval_data import Dataset, Question, load_dataset
from DecodingMethodsModels.pipeline.guided_config import (
    SELF,
    GuidedRunConfig,
    guide_dtype,
    guided_parameters,
    guided_runs,
)
from DecodingMethodsModels.pipeline.outputs import (
    PartialStore,
    changed_settings,
    describe_changes,
    preference_slug,
    read_json,
    run_dir,
)
from DecodingMethodsModels.prompts.amulet import SYSTEM_PROMPT, preference_sentence
from DecodingMethodsModels.prompts.costeer import costeer_sentence
from DecodingMethodsModels.prompts.pad import PRINCIPLE_SETS, preference_prompt

FINGERPRINT_VERSION = 2

@dataclass(frozen=True)
class PlannedRun:
    """One output file. `preference` is the preference text the records carry: the paper's
    sentence, the free text, or PAD's preference prompt when `pad_set` names PAD's principles
    (then both prompts are PAD's: the preference prompt, or none, before the question in the
    user turn). `guided` holds the settings of an ARGS or PAD run, whose file is `stem`.json."""

    method: str
    pref_slug: str
    preference: str
    dataset: Dataset
    directory: Path
    guided: GuidedRunConfig | None = None
    stem: str | None = None
    pad_set: str | None = None

    @property
    def name(self) -> str:
        """The file stem: the method, or the method and its settings in a --config grid."""
        return self.stem or self.method

    @property
    def final_path(self) -> Path:
        return self.directory / f"{self.name}.json"

    @property
    def meta_path(self) -> Path:
        return self.directory / f"{self.name}.meta.json"

    def part_path(self, rank: int) -> Path:
        return self.directory / f"{self.name}.part{rank}.jsonl"

    def part_paths(self) -> list[Path]:
        return sorted(self.directory.glob(f"{self.name}.part*.jsonl"))

    @property
    def label(self) -> str:
        return f"{self.name} {self.pref_slug} {self.dataset.name}"


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
    """What the device and dtype flags resolve to on this machine (they change the tokens);
    `rm_dtype` is the guide's of ARGS and PAD, when there is one."""

    device_type: str
    dtype: str
    rm_dtype: str | None = None


def resolved_hardware(config) -> Hardware:
    from DecodingMethodsModels.models.loading import resolve_device, resolve_dtype

    device = "cuda" if config.multi_gpu else resolve_device(config.device)
    dtype = str(resolve_dtype(config.dtype, device)).removeprefix("torch.")
    rm_dtype = None
    if config.guided_methods and config.rm_name != SELF:
        rm_device = device if config.rm_device is None else resolve_device(config.rm_device)
        rm_dtype = str(resolve_dtype(guide_dtype(config), rm_device)).removeprefix("torch.")
    return Hardware(device.split(":")[0], dtype, rm_dtype)


def method_parameters(config, method: str) -> dict:
    """The hyperparameters that change the tokens of `method` (for fingerprints and sidecars)."""
    if method == "beam":
        return {"num_beams": config.num_beams}
    if method == "la":
        return {"reinforce_ratio": config.reinforce_ratio}
    if method == "amulet":
        from DecodingMethodsModels.rules.combine import amulet_ratio

        return {
            "iteration_num": config.iteration_num, "alpha": config.alpha,
            "player_lambda": config.player_lambda, "eta": config.eta,
            "amulet_solver": config.amulet_solver,
            "amulet_ratio": amulet_ratio(
                config.iteration_num, config.alpha, config.player_lambda, config.eta
            ),
        }
    if method == "costeer":
        return costeer_parameters(config)
    return {}


def costeer_parameters(config) -> dict:
    """CoSteer's hyperparameters, its ratio c_T and its SLM (None: the decoding model)."""
    from DecodingMethodsModels.rules.costeer import costeer_ratio

    slm = None if config.slm_name in (None, config.model_name) else config.slm_name
    return {
        "costeer_iterations": config.costeer_iterations, "costeer_alpha": config.costeer_alpha,
        "costeer_beta": config.costeer_beta, "costeer_lambda": config.costeer_lambda,
        "costeer_eta": config.costeer_eta, "costeer_solver": config.costeer_solver,
        "costeer_ratio": costeer_ratio(config.costeer_iterations, config.costeer_alpha,
                                       config.costeer_beta, config.costeer_lambda,
                                       config.costeer_eta),
        "slm": slm,
        **({"slm_device_type": (config.slm_device or config.device).split(":")[0]}
           if slm and config.slm_device else {}),
    }


def fingerprint(config, run: PlannedRun, model_short_name: str,
                hardware: Hardware | None = None) -> dict:
    """Everything that changes the responses of a run; partial results must match it exactly.

    The device type and dtype are recorded as resolved (`--dtype auto` is float32 on a CPU and
    bfloat16 on CUDA); the seed only when sampling, since greedy and beam runs ignore it.
    Keys that only some runs have (PAD's principle set, the settings of ARGS and PAD, a backend
    other than hf) are added only to those, so the fingerprints of other runs stay as they were.
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
        **({"prompt_style": config.prompt_style} if config.prompt_style != "chat" else {}),
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
        **({"pad_principles": run.pad_set} if run.pad_set else {}),
        **(guided_parameters(config, run.guided, hardware.rm_dtype) if run.guided else {}),
        **({"backend": config.backend} if config.backend != "hf" else {}),
    }


def plan_runs(config, model_short_name: str) -> list[PlannedRun]:
    """Every (preference, dataset, method) of the grid, in that nesting, ARGS and PAD once per
    line of their --config; datasets validated."""
    data_dir = Path(config.data_dir)
    datasets = [load_dataset(data_dir, name, config.limit) for name in config.datasets]
    runs = []
    for pref_name in config.pref_names:
        slug = preference_slug(pref_name, config.pref_text)
        pad_set = pref_name if config.pref_text is None and pref_name in PRINCIPLE_SETS else None
        sentence = config.pref_text or (
            preference_prompt(pad_set) if pad_set else
            costeer_sentence(pref_name) if config.prompt_style == "costeer" else
            preference_sentence(pref_name))
        for dataset in datasets:
            directory = run_dir(config.output_dir, slug, model_short_name, dataset.name)
            for method in config.methods:
                if method not in config.guided_methods:
                    runs.append(PlannedRun(method, slug, sentence, dataset, directory,
                                           pad_set=pad_set))
                    continue
                for stem, guided in guided_runs(config, method):
                    runs.append(PlannedRun(method, slug, sentence, dataset, directory, guided,
                                           stem, pad_set))
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


def check_model_source(source) -> None:
    """A local directory must hold a model: say so before any loading is tried."""
    if source.gguf_file is None and Path(source.path).is_dir():
        if not (Path(source.path) / "config.json").is_file():
            raise UserError(f"{source.path} is a directory without a model in it (no "
                            "config.json): give a model directory, a .gguf file or a hub id")

