"""Command line and validated run configuration. Nothing is parsed, printed or imported from
torch at import time: `build_parser()` and `config_from_args()` do the work when called."""

from __future__ import annotations

import argparse
import difflib
import math
import os
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.guided_runs import DEFAULT_RM_WEIGHT
from DecodingMethodsModels.pad_prompts import PRINCIPLE_SETS

METHODS = ("base", "pref", "beam", "la", "amulet")  # `--method all`: the two-prompt family
GUIDED_METHODS = ("args", "pad")  # reward-guided: they need a guide model (--rm_name)
PREFERENCES = (
    "creative", "sycophantic", "verbose", "complex", "formal", "pleasant", "concise", "uplifting",
)
SOLVERS = ("closed_form", "iterative")
GUIDED_MODES = ("greedy", "topk")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_DATA = "demo"
# the project's data/ (demo.json, and where data/fetch_benchmarks.py puts the benchmarks),
# whatever directory main.py is started from
DEFAULT_DATA_DIR = str(Path(__file__).resolve().parent / "data")
BACKENDS = ("hf", "vllm")
BENCHMARKS = (
    "HelpSteer_train",
    "UltraFeedback_truthful_qa",
    "UltraFeedback_ultrachat",
    "personal_preference_eval_preference_data",
)


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
    num_threads: int | None = None  # torch's CPU threads; changes speed, never the tokens
    # ARGS and PAD (reward-guided decoding)
    rm_name: str | None = None
    rm_weight: float | None = None  # None: DEFAULT_RM_WEIGHT of the method
    topk: int = 10
    mode: str = "greedy"
    sample_temp: float = 0.7
    run_config: str | None = None  # --config: a JSON-lines file, one run per line
    ignore_eos: bool = False
    rm_device: str | None = None  # None: the decoding model's device
    rm_dtype: str | None = None  # None: --dtype
    rm_batch_size: int | None = None
    # the decoding backend: "hf" (transformers, the reference) or "vllm" (backends/)
    backend: str = "hf"
    vllm_max_num_seqs: int = 16  # rows vLLM runs at once (la, amulet, implicit PAD: 2 each)
    vllm_tensor_parallel_size: int = 1
    vllm_kv_cache_gb: float | None = None  # None: 1 GiB on CPU, vLLM's own share of a GPU

    def __post_init__(self) -> None:
        for method in self.methods:
            if method not in METHODS + GUIDED_METHODS:
                raise UserError(_unknown("method", method, METHODS + GUIDED_METHODS))
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
        if self.reference_prompts and any(p in PRINCIPLE_SETS for p in self.pref_names):
            raise UserError("--reference_prompts rebuilds the Amulet paper's prompts; PAD's "
                            "principle sets have their own prompt: drop one of the two")
        self._check_guided()
        self._check_backend()

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
            from DecodingMethodsModels.rg_config import load_run_configs

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
                       "rm_device", "rm_dtype", "rm_batch_size"}
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
        unused = {"rm_device", "rm_dtype", "rm_batch_size"} & given
        if self.rm_name == "self" and unused:
            notes.append(f"{', '.join(sorted(unused))} ignored with --rm_name self: the "
                         "decoding model is its own PersRM")
        elif "rm_batch_size" in given and self.guided_methods == ["pad"]:
            notes.append("rm_batch_size only affects --method args")
        return notes


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (a UserError), not a usage block."""

    def error(self, message: str):
        raise UserError(f"{message} (see python main.py --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="main.py",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Personalised decoding: base, pref, beam, la and amulet (Amulet, ICLR 2025), "
        "and the reward-guided args (ARGS, ICLR 2024) and pad (PAD, ICLR 2025).",
    )
    run = parser.add_argument_group("what to run")
    run.add_argument("--method", default="amulet",
                     help="base, pref, beam, la, amulet, args, pad; a comma list, or 'all' for "
                     "the five that need no reward model (base, pref, beam, la, amulet)")
    run.add_argument("--model_name", default=DEFAULT_MODEL,
                     help="embedded default, a hub id, a local model directory or a .gguf file")
    run.add_argument("--eval_data", default=DEFAULT_DATA,
                     help="dataset name(s) in --data_dir, comma separated; 'all': the paper's four")
    run.add_argument("--pref_name", default="creative",
                     help=f"{', '.join(PREFERENCES)}; a comma list or 'all' (these eight); or "
                     f"PAD's principle sets {', '.join(PRINCIPLE_SETS)} (PAD's prompt in the user "
                     "turn; the base prompt is the bare question)")
    run.add_argument("--pref_text", default=None, help="any free-text preference sentence")
    run.add_argument("--data_dir", default=os.environ.get("AMULET_DATA_DIR", DEFAULT_DATA_DIR),
                     help="where datasets live (env AMULET_DATA_DIR)")
    run.add_argument("--output_dir", default="responses",
                     help="responses go to OUTPUT_DIR/preference/model/dataset/method.json")
    run.add_argument("--limit", type=int, default=None, help="only the first N questions")
    run.add_argument("--overwrite", action="store_true", help="redo a run whose file exists")

    dec = parser.add_argument_group("decoding")
    dec.add_argument("--max_new_tokens", type=int, default=128, help="response length cap")
    dec.add_argument("--do_sample", action="store_true",
                     help="sample in every method (otherwise greedy everywhere)")
    dec.add_argument("--temperature", type=float, default=0.7, help="with --do_sample")
    dec.add_argument("--top_p", type=float, default=0.95, help="nucleus, with --do_sample")
    dec.add_argument("--top_k", type=int, default=None, help="with --do_sample (None: off)")
    dec.add_argument("--seed", type=int, default=42, help="with --do_sample")
    dec.add_argument("--num_beams", type=int, default=16, help="beam width of --method beam")
    dec.add_argument("--repetition_penalty", type=float, default=None,
                     help="applied alike to every method's log-probs (None: no penalty, 1.0)")
    dec.add_argument("--no_repeat_ngram_size", type=int, default=None,
                     help="ban repeating any n-gram of this size in every method (None: off)")
    dec.add_argument("--use_model_generation_config", action="store_true",
                     help="take repetition_penalty and no_repeat_ngram_size from the checkpoint's "
                     "generation config when not given here, for every method alike (otherwise "
                     "the checkpoint's settings reach no method)")
    dec.add_argument("--truncate_long_prompts", action="store_true",
                     help="cut over-long questions from the left instead of refusing them")
    dec.add_argument("--reference_prompts", action="store_true",
                     help="the paper code's prompts: no assistant header, special tokens "
                     "added again (a double BOS on Llama)")

    algo = parser.add_argument_group("LA and Amulet")
    algo.add_argument("--reinforce_ratio", type=float, default=2.0, help="LA's ratio r")
    algo.add_argument("--eta", type=float, default=10.0,
                      help="Amulet's eta: step t weighs the last iterate by 1/(eta t)")
    algo.add_argument("--alpha", type=float, default=2.0,
                      help="Amulet's alpha: utility Q = alpha (log p_t - log p_base)")
    algo.add_argument("--player_lambda", type=float, default=2.0,
                      help="Amulet's lambda: weight of the preference prompt's log-probs")
    algo.add_argument("--iteration_num", type=int, default=60, help="Amulet's T")
    algo.add_argument("--amulet_solver", default="closed_form", choices=SOLVERS,
                      help="closed form, or the paper's T iterations")

    rg = parser.add_argument_group(
        "ARGS and PAD", "Reward-guided decoding: per token, the decoding model's top-k "
        "candidates are rescored by a guide and the best is taken. ARGS: z + w r (r: a reward "
        "model's score of the sequence ending in the candidate); PAD: z + w (log_softmax_k(u) - "
        "log_softmax_k(z)) (u: the PersRM's logits on the same ids).")
    rg.add_argument("--rm_name", default=None,
                    help="the guide: ARGS's reward model (a one-label sequence classifier), "
                    "PAD's PersRM (a causal LM), or 'self' (pad only: implicit PAD, the "
                    "decoding model under the preference prompt); same tokenizer as the model")
    rg.add_argument("--rm_weight", type=float, default=None,
                    help=f"w (None: {DEFAULT_RM_WEIGHT['args']} for args, "
                    f"{DEFAULT_RM_WEIGHT['pad']} for pad); 0 is greedy decoding")
    rg.add_argument("--topk", type=int, default=10, help="candidates rescored per token")
    rg.add_argument("--mode", default="greedy", choices=GUIDED_MODES,
                    help="greedy: the best score; topk: sample softmax(score / sample_temp)")
    rg.add_argument("--sample_temp", type=float, default=0.7, help="with --mode topk")
    rg.add_argument("--config", dest="run_config", default=None, metavar="FILE",
                    help="JSON lines {rm_weight, topk, mode, sample_temp}, one run per line "
                    "(ARGS's and PAD's own config files load); each writes METHOD_<settings>.json")
    rg.add_argument("--ignore_eos", action="store_true",
                    help="always generate --max_new_tokens tokens, as the public codes do "
                    "(off: stop at the first EOS)")
    rg.add_argument("--rm_device", default=None, help="the guide's device (None: --device)")
    rg.add_argument("--rm_dtype", default=None, choices=DTYPES,
                    help="the guide's dtype (None: --dtype)")
    rg.add_argument("--rm_batch_size", type=int, default=None,
                    help="rows per reward-model forward in args (None: batch_size x topk)")

    hw = parser.add_argument_group("hardware")
    hw.add_argument("--backend", default="hf", choices=BACKENDS,
                    help="hf: transformers (the reference); vllm: base, pref, la, amulet and "
                    "implicit PAD on vLLM (pip install -r requirements-vllm.txt)")
    hw.add_argument("--vllm_max_num_seqs", type=int, default=16,
                    help="with --backend vllm: rows at once (even; two per question for la, "
                    "amulet, implicit PAD)")
    hw.add_argument("--vllm_tensor_parallel_size", type=int, default=1,
                    help="with --backend vllm: GPUs one model is split over")
    hw.add_argument("--vllm_kv_cache_gb", type=float, default=None,
                    help="with --backend vllm: KV cache size (None: 1 GiB on CPU, vLLM's "
                    "default share of a GPU)")
    hw.add_argument("--batch_size", type=int, default=8,
                    help="questions decoded at once (la and amulet run 2 rows per question)")
    hw.add_argument("--no_continuous_batching", dest="continuous_batching",
                    action="store_false",
                    help="la, amulet (greedy) and args, pad (--mode greedy) normally admit the "
                    "next question as soon as one finishes; with this flag each batch waits for "
                    "its longest answer")
    hw.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    hw.add_argument("--dtype", default="auto", choices=DTYPES,
                    help="auto: float32 on CPU, bfloat16 on CUDA")
    hw.add_argument("--multi_gpu", action="store_true",
                    help="shard one model over all visible GPUs (device_map='auto')")
    hw.add_argument("--trust_remote_code", action="store_true",
                    help="run a checkpoint's own Python code")
    hw.add_argument("--num_threads", type=int, default=None,
                    help="torch CPU threads (None: torch's choice, one per core); 1 is often "
                    "much faster on a shared or busy machine")
    return parser


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
