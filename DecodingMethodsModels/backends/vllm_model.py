"""The vLLM backend as the run pipeline sees it: a model object with the facts the pipeline
reads from a transformers model (`config`, `generation_config`, `dtype`) and `decode` /
`stream` for one run's questions (pipeline/decode.py's VllmDecoder calls them)."""

from __future__ import annotations

from collections.abc import Iterator

from DecodingMethodsModels.backends.vllm_backend import (
    BEAM,
    VllmRequests,
    model_folder,
    question_seed,
)
from DecodingMethodsModels.backends.vllm_beam import BeamDriver

CPU_KV_CACHE_GB = 1.0
# Beam search re-sends each beam's prompt every step and vLLM's prefix cache serves whole
# blocks only: with the CPU's default 128-token blocks a beam recomputes up to 127 tokens a
# step, with 32 (the CPU attention's smallest) up to 31 (measured: 6x faster, same tokens).
BEAM_CPU_BLOCK = 32


class VllmModel:
    """A vLLM engine holding the decoding model, with the pair driver over it."""

    def __init__(self, engine, engine_settings, hf_config, generation_config, dtype):
        from DecodingMethodsModels.backends.vllm_driver import Driver

        self.engine = engine
        self.engine_settings = engine_settings
        self.driver = Driver(engine, engine_settings.max_num_seqs)
        self.beams = BeamDriver(engine, engine_settings.max_num_seqs)
        self.config = hf_config
        self.generation_config = generation_config
        self.dtype = dtype

    def facts(self) -> dict:
        import vllm

        s = self.engine_settings
        return {"backend": {"name": "vllm", "vllm_version": vllm.__version__,
                            "max_num_seqs": s.max_num_seqs, "max_model_len": s.max_model_len,
                            "tensor_parallel_size": s.tensor_parallel_size,
                            "enable_chunked_prefill": s.enable_chunked_prefill,
                            "async_scheduling": engine_async_scheduling(self.engine)}}

    def check_topk(self, runs) -> None:
        from DecodingMethodsModels.errors import UserError

        vocab = self.config.vocab_size
        for run in runs:
            if run.topk > vocab:
                raise UserError(f"--topk {run.topk} is larger than the decoding model's "
                                f"vocabulary ({vocab} tokens)")

    def stream(self, run, pref_rows, base_rows, settings, seeds) -> Iterator[tuple[int, list]]:
        """(position in the lists, generated ids) of each question as it finishes."""
        from DecodingMethodsModels.backends.vllm_driver import NonFinitePair
        from DecodingMethodsModels.engines.core import NonFiniteScoresError

        method = "pad" if run.guided is not None else run.method
        if method == BEAM:
            yield from self.beams.run(
                pref_rows, settings.num_beams, settings.eos_ids, settings.max_new_tokens,
                self.config.vocab_size)
            return
        jobs = VllmRequests(settings).jobs(method, pref_rows, base_rows, seeds, run.guided)
        try:
            yield from self.driver.run(jobs)
        except NonFinitePair as err:
            raise NonFiniteScoresError(str(err), [err.job]) from None

    def decode(self, run, pref_rows, base_rows, settings, seeds) -> list[list[int]]:
        found = dict(self.stream(run, pref_rows, base_rows, settings, seeds))
        return [found[k] for k in range(len(pref_rows))]


def engine_async_scheduling(engine) -> bool | None:
    """Whether the built engine schedules asynchronously, read from its own configuration."""
    config = getattr(getattr(engine, "vllm_config", None), "scheduler_config", None)
    return getattr(config, "async_scheduling", None)


def question_seeds(seed: int, indices) -> list[int]:
    return [question_seed(seed, i) for i in indices]


def load_vllm_model(source, tokenizer, config, device: str, longest_prompt: int,
                    context: int | None) -> VllmModel:
    """The engine for `source` with the settings of `config`; the model's length is the longest
    prompt plus --max_new_tokens (within the model's context)."""
    from transformers import AutoConfig, GenerationConfig

    from DecodingMethodsModels.backends.vllm_driver import EngineSettings
    from DecodingMethodsModels.backends.vllm_engine import build_checked
    from DecodingMethodsModels.models.loading import (
        generation_eos_ids,
        load_model,
        resolve_dtype,
    )
    from DecodingMethodsModels.rules.beam_search import candidates_per_beam

    dtype = resolve_dtype(config.dtype, device)
    folder = model_folder(source, tokenizer,
                          lambda: load_model(source, "cpu", "float32", False,
                                             config.trust_remote_code))
    hf_config = AutoConfig.from_pretrained(folder, trust_remote_code=config.trust_remote_code)
    try:
        generation_config = GenerationConfig.from_pretrained(folder)
    except OSError:
        generation_config = GenerationConfig.from_model_config(hf_config)
    length = longest_prompt + config.max_new_tokens
    if context is not None:
        length = min(length, context)
    eos_ids = generation_eos_ids(generation_config, tokenizer)
    kv_gb = config.vllm_kv_cache_gb
    if kv_gb is None and device.startswith("cpu"):
        kv_gb = CPU_KV_CACHE_GB
    settings = EngineSettings(
        model=folder, dtype=str(dtype).removeprefix("torch."), max_model_len=length,
        max_num_seqs=config.vllm_max_num_seqs,
        tensor_parallel_size=config.vllm_tensor_parallel_size,
        kv_cache_memory_bytes=None if kv_gb is None else int(kv_gb * 2**30),
        enforce_eager=device.startswith("cpu"),
        max_logprobs=max(20, candidates_per_beam(config.num_beams, eos_ids)),
        block_size=BEAM_CPU_BLOCK if BEAM in config.methods and device.startswith("cpu") else None,
    )
    engine = build_checked(settings, on_cpu=device.startswith("cpu"))
    return VllmModel(engine, settings, hf_config, generation_config, dtype)
