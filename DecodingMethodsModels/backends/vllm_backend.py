"""The vLLM backend of a run: the model as vLLM reads it, and each method as vLLM requests.

base and pref are plain vLLM requests; beam is transformers' beam search over vLLM's
log-probs (vllm_beam.py); la, amulet and implicit PAD are pairs of requests that the pairing
processor (vllm_pairing.py) combines with the project's rules; the driver (vllm_driver.py)
admits them and checks every pair. The settings are the hf backend's
(decode.decode_settings); greedy tokens are the hf backend's. Sampling draws per question
(vLLM's per-request seed for base and pref, the processor's per-question generator for the
pairs), so a sampled answer does not depend on the batch, but it is not the hf backend's draw.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

PAIRED = ("la", "amulet", "costeer")  # costeer: its own model as SLM, an la pair (below)
SINGLE = ("base", "pref")
BEAM = "beam"


def model_folder(source, tokenizer, load_hf_model) -> str:
    """A Hugging Face folder vLLM can read: the model's own folder, or for a GGUF file its
    float32 conversion saved once with the tokenizer (beside the project's GGUF cache)."""
    from DecodingMethodsModels.models.loading import conversion_cache

    if not source.gguf_file:
        return source.path
    cached = conversion_cache(source, "vllm")
    if cached is None:
        import tempfile

        cached = Path(tempfile.mkdtemp(prefix="dmm-vllm-")) / "model"
    if not (cached / "config.json").is_file():
        model = load_hf_model()
        tmp = cached.with_name(f".{cached.name}.tmp")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.replace(cached)
    return str(cached)


def question_seed(seed: int, index) -> int:
    """A sampled question's seed from the run's seed and the question's index."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass
class VllmRequests:
    """Turns a run's method and settings into driver jobs."""

    settings: object  # decode.decode_settings(...)

    def single_params(self, seed: int):
        from vllm import SamplingParams

        s = self.settings
        sampling = {"temperature": 0.0}
        if s.sampling.do_sample:
            sampling = {"temperature": s.sampling.temperature, "top_p": s.sampling.top_p,
                        "top_k": s.sampling.top_k or 0, "seed": seed}
        return SamplingParams(max_tokens=s.max_new_tokens, ignore_eos=True,
                              stop_token_ids=list(s.eos_ids), detokenize=False, **sampling)

    def pair_params(self, method: str, seed: int, guided=None):
        from vllm import SamplingParams

        from DecodingMethodsModels.backends.vllm_pair_spec import PairSpec

        s = self.settings
        rule, params, sampling = method, {}, None
        if method == "la":
            params = {"ratio": s.reinforce_ratio}
        elif method == "costeer":  # the SLM is the model: LA with ratio c_T - 1 (rules/costeer)
            from DecodingMethodsModels.rules.costeer import costeer_ratio

            c = s.costeer
            rule = "la"
            params = {"ratio": costeer_ratio(c.iterations, c.alpha, c.beta, c.player_lambda,
                                             c.eta) - 1.0}
        elif method == "amulet":
            params = {"iterations": s.iteration_num, "alpha": s.alpha,
                      "player_lambda": s.player_lambda, "eta": s.eta, "solver": s.amulet_solver}
        else:  # implicit PAD
            rule, params = "pad", {"weight": guided.rm_weight, "topk": guided.topk}
            if guided.mode == "topk":
                sampling = {"temperature": guided.sample_temp}
        if method in PAIRED and s.sampling.do_sample:
            sampling = {"temperature": s.sampling.temperature, "top_k": s.sampling.top_k,
                        "top_p": s.sampling.top_p}
        out = []
        for role in ("pref", "base"):  # the driver sets the pair key and the sentinels
            spec = PairSpec(pair="", role=role, rule=rule, params=params, sentinel=-1,
                            unusable=-1, seed=seed, sampling=sampling)
            out.append(SamplingParams(max_tokens=s.max_new_tokens, temperature=0.0,
                                      ignore_eos=True, stop_token_ids=list(s.eos_ids),
                                      detokenize=False, extra_args=spec.as_extra_args()))
        return out

    def jobs(self, method: str, pref_rows, base_rows, seeds: list[int], guided=None):
        from DecodingMethodsModels.backends.vllm_driver import Job

        if method == "base":
            return [Job(b, self.single_params(sd)) for b, sd in zip(base_rows, seeds, strict=True)]
        if method == "pref":
            return [Job(p, self.single_params(sd)) for p, sd in zip(pref_rows, seeds, strict=True)]
        jobs = []
        for p, b, sd in zip(pref_rows, base_rows, seeds, strict=True):
            pref_params, base_params = self.pair_params(method, sd, guided)
            jobs.append(Job(p, pref_params, b, base_params))
        return jobs


def refusal(config) -> str | None:
    """Why this command cannot run on vLLM (one line), or None."""
    methods = set(config.methods)
    unsupported = sorted(methods - {*SINGLE, BEAM, *PAIRED, "pad"})
    if unsupported:
        return (f"--backend vllm runs base, pref, beam, la, amulet and implicit PAD (--method "
                f"pad --rm_name self), and costeer with the model as its own SLM; run --method "
                f"{','.join(unsupported)} with --backend hf")
    if BEAM in methods and config.do_sample:
        return ("--method beam with --do_sample (beam sampling) is not supported with "
                "--backend vllm; use --backend hf")
    if "costeer" in methods and config.slm_name not in (None, config.model_name):
        return ("--backend vllm runs costeer with the model as its own SLM (no --slm_name): "
                "a separate SLM needs a second model each step; run it with --backend hf")
    if "pad" in methods and config.rm_name != "self":
        return ("--backend vllm runs implicit PAD only (--rm_name self): explicit PAD needs a "
                "second model each step; run it with --backend hf")
    if config.ignore_eos:
        return "--ignore_eos is not supported with --backend vllm; use --backend hf"
    if config.multi_gpu:
        return ("--multi_gpu shards with transformers; with --backend vllm use "
                "--vllm_tensor_parallel_size")
    if config.repetition_penalty not in (None, 1.0) or config.no_repeat_ngram_size not in (
            None, 0) or config.use_model_generation_config:
        return ("repetition penalties and n-gram bans are not supported with --backend vllm; "
                "use --backend hf")
    if config.vllm_max_num_seqs < 2 or config.vllm_max_num_seqs % 2:
        return (f"--vllm_max_num_seqs must be even and at least 2 (pairs of rows), got "
                f"{config.vllm_max_num_seqs}")
    if config.vllm_tensor_parallel_size < 1:
        return f"--vllm_tensor_parallel_size must be >= 1, got {config.vllm_tensor_parallel_size}"
    if config.vllm_kv_cache_gb is not None and not config.vllm_kv_cache_gb > 0:
        return f"--vllm_kv_cache_gb must be > 0, got {config.vllm_kv_cache_gb}"
    return None
