"""Command line and validated run configuration. Nothing is parsed, printed or imported from
torch at import time: `build_parser()` (pipeline/cli_options.py) and `config_from_args()` do the
work when called."""

from __future__ import annotations

import difflib
import math
import warnings
from dataclasses import asdict, dataclass, fields

from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.pipeline.cli_options import (
    BACKENDS,
    BENCHMARKS,
    DEFAULT_DATA,
    DEFAULT_DATA_DIR,
    DEFAULT_MODEL,
    DTYPES,
    GUIDED_METHODS,
    GUIDED_MODES,
    METHODS,
    PAD_RULES,
    PREFERENCES,
    PROMPT_STYLES,
    SOLVERS,
    STEERED_METHODS,
    build_parser,
)
from DecodingMethodsModels.prompts.pad import PRINCIPLE_SETS


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a generation run; validated on construction."""

    method: str = "amulet"
    model_name: str = DEFAULT_MODEL
    eval_data: str = DEFAULT_DATA
    pref_name: str = "creative"
    pref_text: str | None = None
    data_dir: str = DEFAULT_DATA_DIR
    output_dir: str = "responses"
    limit: int | None = None
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int | None = None
    seed: int = 42
    num_beams: int = 16
    reinforce_ratio: float = 2.0
    eta: float = 10.0
    alpha: float = 2.0
    player_lambda: float = 2.0
    iteration_num: int = 60
    amulet_solver: str = "closed_form"
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    multi_gpu: bool = False
    trust_remote_code: bool = False
    overwrite: bool = False
    truncate_long_prompts: bool = False
    reference_prompts: bool = False
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    use_model_generation_config: bool = False
    continuous_batching: bool = True
    num_threads: int | None = None  # torch CPU threads; None: auto (pipeline/threads.py)
    # ARGS and PAD (reward-guided decoding)
    rm_name: str | None = None
    rm_weight: float | None = None  # None: DEFAULT_RM_WEIGHT of the method
    topk: int = 10
    mode: str = "greedy"
    sample_temp: float = 0.7
    public_sample_temp: bool = False  # sample every topk run at 0.7, as the public codes do
    prompt_style: str = "chat"
    run_config: str | None = None  # --config: a JSON-lines file, one run per line
    ignore_eos: bool = False
    rm_device: str | None = None  # None: the decoding model's device
    rm_dtype: str | None = None  # None: --dtype
    rm_batch_size: int | None = None
    pad_rule: str = "auto"  # PAD_RULES: auto (by the tokenizers' ids), same_ids, retokenized, path
    # the decoding backend: "hf" (transformers, the reference) or "vllm" (backends/)
    backend: str = "hf"
    vllm_max_num_seqs: int = 16  # rows vLLM runs at once (la, amulet, implicit PAD: 2 each)
    vllm_tensor_parallel_size: int = 1
    vllm_kv_cache_gb: float | None = None  # None: 1 GiB on CPU, vLLM's own share of a GPU
    # CoSteer: a small model (SLM, None: the decoding model) steers the decoding model
    slm_name: str | None = None
    slm_device: str | None = None  # None: --device
    costeer_iterations: int = 20
    costeer_alpha: float = 2.0
    costeer_beta: float = 1.0
    costeer_lambda: float = 2.0
    costeer_eta: float = 10.0
    costeer_solver: str = "closed_form"

    def __post_init__(self) -> None:
        known = METHODS + GUIDED_METHODS + STEERED_METHODS
        for method in self.methods:
            if method not in known:
                raise UserError(_unknown("method", method, known))
        if self.pref_text is None:
            for pref in self.pref_names:
                if pref not in PREFERENCES and pref not in PRINCIPLE_SETS:
                    raise UserError(_unknown("preference", pref, PREFERENCES + tuple(
                        PRINCIPLE_SETS)) + "; or give any preference as --pref_text")
        else:
            if not self.pref_text.strip():
                raise UserError("--pref_text is empty")
            # a slash is harmless: the directory name is a slug computed from the text
            if _unsafe_name(self.pref_text.replace("/", "").replace("\\", "")):
                raise UserError("--pref_text must not contain control characters")
        if _unsafe_name(self.model_name.replace("/", "")):
            raise UserError("--model_name must not contain control characters")
        _at_least("max_new_tokens", self.max_new_tokens, 1)
        _at_least("num_beams", self.num_beams, 1)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("iteration_num", self.iteration_num, 0)
        if self.limit is not None:
            _at_least("limit", self.limit, 1)
        if self.top_k is not None:
            _at_least("top_k", self.top_k, 1)
        if self.num_threads is not None:
            _at_least("num_threads", self.num_threads, 1)
        if self.repetition_penalty is not None:
            _positive("repetition_penalty", self.repetition_penalty)
        if self.no_repeat_ngram_size is not None:
            _at_least("no_repeat_ngram_size", self.no_repeat_ngram_size, 0)
        _positive("eta", self.eta)
        _positive("player_lambda", self.player_lambda)
        _positive("temperature", self.temperature)
        if self.alpha < 0:
            raise UserError(f"--alpha must be >= 0, got {self.alpha}")
        if self.reinforce_ratio < 0:
            raise UserError(f"--reinforce_ratio must be >= 0, got {self.reinforce_ratio}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top_p must be in (0, 1], got {self.top_p}")
        if self.amulet_solver not in SOLVERS:
            raise UserError(_unknown("Amulet solver", self.amulet_solver, SOLVERS))
        if self.dtype not in DTYPES:
            raise UserError(_unknown("dtype", self.dtype, DTYPES))
        if self.prompt_style not in PROMPT_STYLES:
            raise UserError(_unknown("prompt style", self.prompt_style, PROMPT_STYLES))
        if self.prompt_style == "raw" and self.methods != ["args"]:
            raise UserError("--prompt_style raw (public ARGS's untemplated question) is for "
                            "--method args alone; the other methods need the chat template")
        if self.reference_prompts and any(p in PRINCIPLE_SETS for p in self.pref_names):
            raise UserError("--reference_prompts rebuilds the Amulet paper's prompts; PAD's "
                            "principle sets have their own prompt: drop one of the two")
        self._check_guided()
        self._check_costeer()
        self._check_backend()

    def _check_costeer(self) -> None:
        """CoSteer's flags and prompt style, before any model loads."""
        _at_least("costeer_iterations", self.costeer_iterations, 0)
        _positive("costeer_lambda", self.costeer_lambda)
        _positive("costeer_eta", self.costeer_eta)
        if not (self.costeer_alpha >= 0 and math.isfinite(self.costeer_alpha)):
            raise UserError(f"--costeer_alpha must be a finite number >= 0, got "
                            f"{self.costeer_alpha}")
        if not math.isfinite(self.costeer_beta):
            raise UserError(f"--costeer_beta must be a finite number, got {self.costeer_beta}")
        if self.costeer_solver not in SOLVERS:
            raise UserError(_unknown("CoSteer solver", self.costeer_solver, SOLVERS))
        if self.slm_name is not None and (not self.slm_name.strip()
                                          or _unsafe_name(self.slm_name.replace("/", ""))):
            raise UserError("--slm_name must be a model name without control characters")
        if self.prompt_style == "costeer":
            if self.guided_methods:
                raise UserError("--prompt_style costeer (CoSteer's prompts) is for base, pref, "
                                "beam, la, amulet and costeer; args and pad have their own")
            if self.reference_prompts:
                raise UserError("--reference_prompts rebuilds the Amulet paper's prompts and "
                                "--prompt_style costeer CoSteer's: drop one of the two")
            if self.pref_text is None and any(p in PRINCIPLE_SETS for p in self.pref_names):
                raise UserError("--prompt_style costeer takes a named preference or "
                                "--pref_text, not PAD's principle sets")

    def _check_guided(self) -> None:
        """Flags of ARGS and PAD, and the --config file, checked before any model loads."""
        guided = self.guided_methods
        if not guided:
            if self.run_config is not None:
                raise UserError("--config FILE (one reward-guided run per line) is for "
                                "--method args or pad")
            return
        if len(guided) > 1:
            raise UserError("--method args and pad need different guides (ARGS a reward "
                            "model, PAD a PersRM): run them as two commands")
        method = guided[0]
        if self.rm_name is None:
            raise UserError(f"--method {method} needs --rm_name: " + (
                "a reward model (a sequence classifier with one label) with the decoding "
                "model's tokenizer" if method == "args" else
                "PAD's PersRM (a causal LM with the decoding model's tokenizer), or 'self' for "
                "implicit PAD (the decoding model under the preference prompt)"))
        if method == "args" and self.rm_name == "self":
            raise UserError("--rm_name self (implicit PAD) is for --method pad: ARGS needs a "
                            "reward model")
        if self.rm_weight is not None and not math.isfinite(self.rm_weight):
            raise UserError(f"--rm_weight must be a finite number, got {self.rm_weight}")
        _at_least("topk", self.topk, 1)
        if self.mode not in GUIDED_MODES:
            raise UserError(_unknown("mode", self.mode, GUIDED_MODES))
        if not math.isfinite(self.sample_temp):
            raise UserError(f"--sample_temp must be a finite number, got {self.sample_temp}")
        _positive("sample_temp", self.sample_temp)
        if self.rm_batch_size is not None:
            _at_least("rm_batch_size", self.rm_batch_size, 1)
        if self.pad_rule not in PAD_RULES:
            raise UserError(_unknown("pad_rule", self.pad_rule, PAD_RULES))
        if self.rm_dtype is not None and self.rm_dtype not in DTYPES:
            raise UserError(_unknown("dtype", self.rm_dtype, DTYPES))
        if self.do_sample:
            raise UserError(f"--do_sample does not apply to --method {method}: it samples with "
                            "--mode topk, from softmax(score / --sample_temp) over its --topk "
                            "candidates")
        penalised = [f"--{name}" for name, off in (("repetition_penalty", 1.0),
                                                   ("no_repeat_ngram_size", 0))
                     if getattr(self, name) not in (None, off)]
        if penalised:
            raise UserError(f"{' and '.join(penalised)} cannot be applied by --method {method}: "
                            "the reward-guided decoder scores raw logits of its top-k "
                            "candidates, with no penalty; run it without them")
        if self.run_config is not None:
            from DecodingMethodsModels.pipeline.guided_config import load_run_configs

            load_run_configs(self.run_config)  # a bad line is an error now, naming the line

    def _check_backend(self) -> None:
        """--backend vllm: what it cannot run, in one line, before anything loads."""
        if self.backend not in BACKENDS:
            raise UserError(_unknown("backend", self.backend, BACKENDS))
        if self.backend == "hf":
            return
        from DecodingMethodsModels.backends import vllm_refusal

        reason = vllm_refusal(self)
        if reason is not None:
            raise UserError(reason)

    @property
    def guided_methods(self) -> list[str]:
        return [m for m in self.methods if m in GUIDED_METHODS]

    @property
    def methods(self) -> list[str]:
        return _expand(self.method, METHODS)

    @property
    def pref_names(self) -> list[str]:
        return [None] if self.pref_text is not None else _expand(self.pref_name, PREFERENCES)

    @property
    def datasets(self) -> list[str]:
        return _expand(self.eval_data, BENCHMARKS)

    def to_dict(self) -> dict:
        return asdict(self)

    def ineffective_flags(self, given: set[str]) -> list[str]:
        """Flags the user set that change nothing in this run, for a warning."""
        notes = []
        sampling = {"temperature", "top_p", "top_k"} & given
        if sampling and not self.do_sample:
            notes.append(f"{', '.join(sorted(sampling))} ignored without --do_sample")
        amulet = {"eta", "alpha", "player_lambda", "iteration_num", "amulet_solver"} & given
        if amulet and "amulet" not in self.methods:
            notes.append(f"{', '.join(sorted(amulet))} only affect --method amulet")
        if "reinforce_ratio" in given and "la" not in self.methods:
            notes.append("reinforce_ratio only affects --method la")
        if "num_beams" in given and "beam" not in self.methods:
            notes.append("num_beams only affects --method beam")
        costeer = {f for f in given if f.startswith("costeer_") or f.startswith("slm_")}
        if costeer and "costeer" not in self.methods:
            notes.append(f"{', '.join(sorted(costeer))} only affect --method costeer")
        if "costeer" in self.methods and self.costeer_alpha > self.costeer_lambda:
            notes.append(f"costeer_alpha {self.costeer_alpha} > costeer_lambda "
                         f"{self.costeer_lambda}: CoSteer's ratio c_T diverges as "
                         "costeer_iterations grows")
        notes += self._ineffective_guided_flags(given)
        vllm_flags = {f for f in given if f.startswith("vllm_")}
        if vllm_flags and self.backend != "vllm":
            notes.append(f"{', '.join(sorted(vllm_flags))} only affect --backend vllm")
        if "amulet" in self.methods and self.alpha > self.player_lambda:
            notes.append(
                f"alpha {self.alpha} > player_lambda {self.player_lambda}: Amulet's ratio k "
                "diverges as iteration_num grows"
            )
        return notes

    def _ineffective_guided_flags(self, given: set[str]) -> list[str]:
        guide_flags = {"rm_name", "rm_weight", "topk", "mode", "sample_temp", "ignore_eos",
                       "rm_device", "rm_dtype", "rm_batch_size", "public_sample_temp",
                       "pad_rule"}
        if not self.guided_methods:
            flags = guide_flags & given
            return [f"{', '.join(sorted(flags))} only affect --method args and pad"] if flags \
                else []
        notes = []
        per_line = {"rm_weight", "topk", "mode", "sample_temp"} & given
        if self.run_config is not None and per_line:
            notes.append(f"{', '.join(sorted(per_line))} ignored: --config sets them per line")
        elif "sample_temp" in given and self.mode == "greedy":
            notes.append("sample_temp ignored with --mode greedy (use --mode topk to sample)")
        if "public_sample_temp" in given and self.run_config is None and self.mode == "greedy":
            notes.append("public_sample_temp only affects runs that sample (--mode topk or "
                         "topk lines of --config)")
        unused = {"rm_device", "rm_dtype", "rm_batch_size"} & given
        if self.rm_name == "self" and unused:
            notes.append(f"{', '.join(sorted(unused))} ignored with --rm_name self: the "
                         "decoding model is its own PersRM")
        elif "rm_batch_size" in given and self.guided_methods == ["pad"]:
            notes.append("rm_batch_size only affects --method args")
        if "pad_rule" in given and (self.guided_methods != ["pad"] or self.rm_name == "self"):
            notes.append("pad_rule only affects --method pad with a PersRM (--rm_name)")
        return notes


def config_from_args(argv: list[str] | None = None) -> RunConfig:
    """Parse `argv`, validate, and warn once about flags that have no effect."""
    parser = build_parser()
    args = parser.parse_args(argv)
    values = vars(args)
    config = RunConfig(**{f.name: values[f.name] for f in fields(RunConfig)})
    given = {f.name for f in fields(RunConfig) if values[f.name] != parser.get_default(f.name)}
    for note in config.ineffective_flags(given):
        warnings.warn(note, stacklevel=1)
    return config


def _expand(value: str, choices: tuple[str, ...]) -> list[str]:
    """A comma list, with `all` standing for every choice; duplicates dropped, order kept."""
    items = []
    for item in (v.strip() for v in value.split(",")):
        items.extend(choices if item == "all" else [item] if item else [])
    return list(dict.fromkeys(items)) or [""]


def _unknown(kind: str, value: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(value, choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {value!r}{hint}; choose from {', '.join(choices)}"


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise UserError(f"--{name} must be >= {low}, got {value}")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise UserError(f"--{name} must be > 0, got {value}")


def _unsafe_name(text: str) -> bool:
    return "/" in text or "\\" in text or any(ord(c) < 32 or ord(c) == 127 for c in text)
