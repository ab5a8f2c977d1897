"""The command line's choices and its argument parser (`python main.py --help`), grouped as the
help shows them; config.py validates what it parses into a RunConfig. No torch import here."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.pipeline.guided_config import DEFAULT_RM_WEIGHT
from DecodingMethodsModels.pipeline.threads import thread_count_arg
from DecodingMethodsModels.prompts.pad import PRINCIPLE_SETS

METHODS = ("base", "pref", "beam", "la", "amulet")  # `--method all`: the two-prompt family
GUIDED_METHODS = ("args", "pad")  # reward-guided: they need a guide model (--rm_name)
STEERED_METHODS = ("costeer",)  # a small model steers the decoding one (--slm_name)
PREFERENCES = (
    "creative", "sycophantic", "verbose", "complex", "formal", "pleasant", "concise", "uplifting",
)
SOLVERS = ("closed_form", "iterative")
GUIDED_MODES = ("greedy", "topk")
# PAD's rule for a PersRM: by whether its tokenizer gives the decoding model's ids, forced, or by
# PAD.py's own test ("Llama-3" in the decoding model's name: first rule)
PAD_RULES = ("auto", "same_ids", "retokenized", "path")
PROMPT_STYLES = ("chat", "raw", "costeer")  # raw: public ARGS's question (args only);
# costeer: CoSteer's prompts (its system turn, the preference after the question)
DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("hf", "vllm")  # hf: transformers and the engines (the reference); vllm: backends/
DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_DATA = "demo"
# the project's data/ (demo.json, and where data/fetch_benchmarks.py puts the benchmarks),
# whatever directory main.py is started from
DEFAULT_DATA_DIR = str(Path(__file__).resolve().parents[2] / "data")
BENCHMARKS = (
    "HelpSteer_train",
    "UltraFeedback_truthful_qa",
    "UltraFeedback_ultrachat",
    "personal_preference_eval_preference_data",
)


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
    _add_what_to_run(parser)
    _add_decoding(parser)
    _add_la_and_amulet(parser)
    _add_reward_guided(parser)
    _add_costeer(parser)
    _add_hardware(parser)
    return parser


def _add_what_to_run(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("what to run")
    run.add_argument("--method", default="amulet",
                     help="base, pref, beam, la, amulet, args, pad, costeer; a comma list, or "
                     "'all' for "
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


def _add_decoding(parser: argparse.ArgumentParser) -> None:
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


def _add_la_and_amulet(parser: argparse.ArgumentParser) -> None:
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


def _add_reward_guided(parser: argparse.ArgumentParser) -> None:
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
    rg.add_argument("--prompt_style", default="chat", choices=PROMPT_STYLES,
                    help="chat: pref's templated prompt; raw (args only): the question text "
                    "alone, tokenised with special tokens and no chat template, as public ARGS "
                    "(its HH-RLHF prompts already hold the dialogue); the preference is then "
                    "the reward model's alone; costeer (not args, pad): CoSteer's prompts, "
                    "system 'You are a helpful assistant.', the user turn the question, "
                    "followed by the preference in the personalised prompt")
    rg.add_argument("--public_sample_temp", action="store_true",
                    help="sample every topk run at 0.7 whatever --sample_temp or the --config "
                    "line says, as ARGS's and PAD's collect_model_outs.py do (they never pass "
                    "sample_temp on)")
    rg.add_argument("--config", dest="run_config", default=None, metavar="FILE",
                    help="JSON lines {rm_weight, topk, mode, sample_temp}, one run per line "
                    "(ARGS's and PAD's own config files load); each writes METHOD_<settings>.json")
    rg.add_argument("--ignore_eos", action="store_true",
                    help="always generate --max_new_tokens tokens, as the public codes do "
                    "(off: stop at the first EOS)")
    rg.add_argument("--pad_rule", default="auto", choices=PAD_RULES,
                    help="PAD's rule for the PersRM: auto: the first (same ids) when its "
                    "tokenizer gives the decoding model's ids, else the second (text re-encoded "
                    "by its tokenizer); same_ids or retokenized: that rule; path: PAD.py's test, "
                    "the first rule when the model name contains 'Llama-3'")
    rg.add_argument("--rm_device", default=None, help="the guide's device (None: --device)")
    rg.add_argument("--rm_dtype", default=None, choices=DTYPES,
                    help="the guide's dtype (None: --dtype)")
    rg.add_argument("--rm_batch_size", type=int, default=None,
                    help="rows per reward-model forward in args (None: batch_size x topk)")


def _add_costeer(parser: argparse.ArgumentParser) -> None:
    co = parser.add_argument_group(
        "CoSteer", "--method costeer: per token, pi_T = log_softmax(b + c_T D), b the model's "
        "log-probs on the plain (base) prompt, D the SLM's log-probs on the personalised minus "
        "the plain prompt, c_T CoSteer's T FTRL steps collapsed to one ratio.")
    co.add_argument("--slm_name", default=None,
                    help="the small model (SLM) that reads the preference, with the decoding "
                    "model's tokenizer (None: the decoding model itself)")
    co.add_argument("--slm_device", default=None, help="the SLM's device (None: --device)")
    co.add_argument("--costeer_iterations", type=int, default=20, help="CoSteer's T")
    co.add_argument("--costeer_alpha", type=float, default=2.0,
                    help="CoSteer's alpha: utility U = alpha (pi - b) + beta D")
    co.add_argument("--costeer_beta", type=float, default=1.0, help="CoSteer's beta")
    co.add_argument("--costeer_lambda", type=float, default=2.0,
                    help="CoSteer's lambda: weight of the plain prompt's log-probs b")
    co.add_argument("--costeer_eta", type=float, default=10.0, help="CoSteer's eta")
    co.add_argument("--costeer_solver", default="closed_form", choices=SOLVERS,
                    help="closed form (one ratio c_T), or CoSteer's T steps")


def _add_hardware(parser: argparse.ArgumentParser) -> None:
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
    hw.add_argument("--num_threads", type=thread_count_arg, default=None, metavar="auto|N",
                    help="torch CPU threads (default auto: the free cores by the load average, "
                    "at least 1, at most torch's one per core; see README Threads)")
