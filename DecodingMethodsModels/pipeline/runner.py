"""The Python API behind main.py: plan the grid of runs, validate everything, load the model
once, decode batch by batch with resumable partial results, and write the final files.

Order matters for the promises main.py makes: every input (output directory, model name,
datasets, partial files of an earlier configuration, prompt lengths) is checked before anything
is written, and the output directory before any weights are loaded.

The stages live in their own modules, in pipeline order: plan.py (the runs, their fingerprints,
what is already on disk, the batches), encode.py (prompts as token ids, checked against the
context), decode.py (the decode settings and each rank's batches into partial files) and
assemble.py (the partial files of every rank into final files). This module is the glue.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.pipeline.assemble import assemble_ready, wait_for_ranks
from DecodingMethodsModels.pipeline.costeer_slm import check_slm_tokenizer, load_slm, slm_context
from DecodingMethodsModels.pipeline.decode import (
    Decoder,
    decode_settings,
    decode_share,
    decoder_class,
    resolve_penalties,
)
from DecodingMethodsModels.pipeline.distributed import (
    Process,
    join,
    launched_process,
    leave,
    meet,
    meet_and_part,
    rank_device,
    restrict_gpus,
)
from DecodingMethodsModels.pipeline.encode import configured_context, encode_all, model_context
from DecodingMethodsModels.pipeline.guided_runs import (
    check_guide_tokenizer,
    guide_context,
    guide_device,
    load_guide,
)
from DecodingMethodsModels.pipeline.outputs import check_writable
from DecodingMethodsModels.pipeline.plan import (
    Work,
    batches_of,
    check_model_source,
    plan_runs,
    select_todo,
)
from DecodingMethodsModels.pipeline.progress import Progress
from DecodingMethodsModels.pipeline.provenance import software_facts
from DecodingMethodsModels.pipeline.threads import ThreadChoice, choose_threads, threads_set


def run(config) -> list[Path]:
    """Run every (preference, dataset, method) of `config`; returns the final files written.

    Under torchrun / accelerate launch every rank calls this; rank 0 returns the files.
    """
    process = launched_process()
    todo = plan_work(config, process)
    if not todo:
        return []
    clear = lambda: clear_for_rerun(todo, config.overwrite)  # noqa: E731
    threads = choose_threads(config.num_threads)  # before loading adds to the load average
    with threads_set(threads):
        if config.backend == "vllm":
            # vLLM's engine starts a torch.distributed world of its own in this process: the
            # ranks meet before it is built (nothing later needs a group: rank 0 assembles the
            # final files from what the others wrote)
            meet_and_part(process, Path(config.output_dir), clear)
            decoder, facts = load_and_check(config, process, todo)
            return decode_all(config, todo, process, decoder, facts, threads)
        decoder, facts = load_and_check(config, process, todo)
        join(process)
        try:
            meet(process, Path(config.output_dir), clear)
            return decode_all(config, todo, process, decoder, facts, threads)
        finally:
            leave(process)


def plan_work(config, process: Process) -> list[Work]:
    """Validate what needs no model (output directory, model name, datasets, partial files)
    and list the runs left to do."""
    from DecodingMethodsModels.models.loading import check_fetchable, resolve_model

    check_writable(config.output_dir)
    source = resolve_model(config.model_name)
    check_model_source(source)
    runs = plan_runs(config, source.short_name)
    if config.overwrite or not all(r.final_path.exists() for r in runs):
        check_fetchable(source)  # the model will be needed: offline, say so in seconds
    todo, complete = select_todo(config, runs, source.short_name)
    if complete:
        _printer(process)(f"{complete} of {len(runs)} runs already complete: skipped")
    return todo


def load_and_check(config, process: Process, todo: list[Work]) -> tuple[Decoder, dict]:
    """Tokenizer, every prompt checked against the context, then the model; fixes each run's
    batches and this rank's share of them."""
    from DecodingMethodsModels.models.loading import (
        eos_token_ids,
        load_tokenizer,
        pad_token_id,
        resolve_device,
        resolve_model,
    )
    from DecodingMethodsModels.prompts.amulet import template_accepts_system

    backend = decoder_class(config)  # an unknown backend fails before anything loads
    if not process.is_main:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    source = resolve_model(config.model_name)
    on_vllm = config.backend == "vllm"  # each rank's engine on its own tensor-parallel GPUs
    restrict_gpus(process, config.multi_gpu or on_vllm, config.device,
                  config.vllm_tensor_parallel_size if on_vllm else None)
    device = rank_device(resolve_device(config.device), process, config.multi_gpu)
    tokenizer = load_tokenizer(source, config.trust_remote_code, config.prompt_style != "raw")
    system_role = template_accepts_system(tokenizer)
    guided = [w.run.guided for w in todo if w.run.guided is not None]
    guide_limit = guide_context(config) if guided else None  # the guide reads the same ids
    check_slm_tokenizer(config, tokenizer)  # CoSteer's SLM: no weights yet
    guide_limit = _smaller(guide_limit, slm_context(config))  # the SLM reads the same ids
    # every prompt is encoded and checked before anything is written or any weight loaded
    context = configured_context(source, config.trust_remote_code)
    prompts = encode_all(todo, tokenizer, system_role, _smaller(context, guide_limit), config)
    retokenizer, rule_facts = None, {}
    if guided:  # the guide's tokenizer on the run's prompts, before any weight loads
        prompt_ids = [ids for pair in prompts.values() for rows in pair for ids in rows]
        retokenizer, rule_facts = check_guide_tokenizer(config, tokenizer, prompt_ids,
                                                        _printer(process))
    model = decoding_model(config, source, tokenizer, device, prompts, context)
    if context is None and model_context(model.config) is not None:
        prompts = encode_all(todo, tokenizer, system_role,
                             _smaller(model_context(model.config), guide_limit), config)
    for work in todo:
        pref_ids, _ = prompts[(work.run.preference, work.run.dataset.name)]
        positions = work.positions_to_decode() if work.kept else None
        work.batches = batches_of(work.run.dataset.questions, [len(p) for p in pref_ids],
                                  config.batch_size, positions)
        work.mine = [b for b in range(len(work.batches)) if process.owns(b) and b not in work.done]
    eos_ids = eos_token_ids(model, tokenizer)
    penalties, generation_facts = resolve_penalties(config, model)
    pad_id = pad_token_id(tokenizer, eos_ids)
    settings = decode_settings(config, eos_ids, pad_id, penalties)
    slm, slm_facts = (None, {}) if config.backend == "vllm" else load_slm(
        config, process, device, tokenizer)
    if slm is not None:
        settings = replace(settings, costeer=replace(settings.costeer, slm=slm))
    guide, guide_facts = None, {}
    if guided:
        if penalties.active:
            raise UserError(f"the checkpoint's repetition penalty or n-gram ban "
                            f"(--use_model_generation_config) cannot be applied by --method "
                            f"{config.guided_methods[0]}: run it without that flag")
        guide, guide_facts = guide_of(config, process, device, model, eos_ids, pad_id, guided,
                                      retokenizer, rule_facts)
    decoder = backend(model, tokenizer, prompts, settings, eos_ids, config.seed,
                      config.batch_size, config.continuous_batching, guide)
    backend_facts = model.facts() if config.backend == "vllm" else {}
    return decoder, {**environment_facts(process, device, model), **guide_facts,
                     **slm_facts, **generation_facts, **backend_facts}


def decoding_model(config, source, tokenizer, device, prompts: dict, context: int | None):
    """The decoding model: transformers weights (--backend hf), or a vLLM engine over them."""
    if config.backend == "vllm":
        from DecodingMethodsModels.backends.vllm_model import load_vllm_model

        longest = max(len(ids) for pair in prompts.values() for rows in pair for ids in rows)
        return load_vllm_model(source, tokenizer, config, device, longest, context)
    from DecodingMethodsModels.models.loading import load_model

    return load_model(source, device, config.dtype, config.multi_gpu, config.trust_remote_code)


def guide_of(config, process, device, model, eos_ids, pad_id, guided, retokenizer,
             rule_facts=None):
    """(guide, its sidecar facts) of ARGS's or PAD's runs. On vLLM only implicit PAD runs (the
    model guides itself inside vLLM): no guide is loaded."""
    if config.backend == "vllm":
        model.check_topk(guided)
        return None, {"guide": {"rm_name": config.rm_name}}
    return load_guide(config, guide_device(config, process, device), model, eos_ids, pad_id,
                      guided, retokenizer, rule_facts)


def _smaller(a: int | None, b: int | None) -> int | None:
    """The smaller of two context lengths, either of which may be unknown (None)."""
    return b if a is None else a if b is None else min(a, b)


def clear_for_rerun(todo: list[Work], overwrite: bool) -> None:
    """With --overwrite, remove each run's final file, sidecar and partial files first, so an
    interrupted overwrite resumes (without --overwrite) instead of keeping the old final file."""
    if not overwrite:
        return
    for work in todo:
        for path in [work.run.final_path, work.run.meta_path, *work.run.part_paths()]:
            path.unlink(missing_ok=True)


def decode_all(config, todo: list[Work], process: Process, decoder: Decoder,
               facts: dict, threads: ThreadChoice | None = None) -> list[Path]:
    """This rank's batches of every run, under one progress report (rank 0's share of the
    work: a bar on a terminal, a line per batch otherwise); rank 0 assembles each run as soon
    as all its batches are on disk."""
    total = sum(len(w.batches[b]) for w in todo for b in w.mine)
    share = f" (rank 0's share of {process.world_size})" if process.is_distributed else ""
    written, pending = [], []
    with Progress(total, show=process.is_main) as bar:
        say = bar.write
        if threads is not None and facts.get("device") == "cpu":
            say(f"torch threads: {threads.reason}")
        for number, work in enumerate(todo, 1):
            left = sum(len(work.batches[b]) for b in work.mine)
            questions = len(work.run.dataset.questions)
            say(f"[{number}/{len(todo)}] {work.run.label}: {left} of {questions} questions "
                f"to decode{' here' if process.is_distributed else ''}")
            bar.set_description(f"[{number}/{len(todo)}] {work.run.label}{share}")
            decode_share(config, work, process, decoder, bar)
            if process.is_main:
                pending.append(work)
                written += assemble_ready(config, pending, facts, say)
        if process.is_main:
            written += wait_for_ranks(config, pending, facts, say, process)
            reran = rerun_total(todo, written)
            if reran:  # the run's last line, so that a re-run is never missed
                say(f"vLLM decoded {reran} pair(s) again (a row fell out of step); each "
                    "run's sidecar lists them under pairs_rerun")
    return written


def rerun_total(todo: list[Work], written: list[Path]) -> int:
    """Pairs decoded again on vLLM over the runs written, from their sidecars."""
    import json

    done = set(written)
    return sum(json.loads(w.run.meta_path.read_text()).get("pairs_rerun", {}).get("count", 0)
               for w in todo if w.run.final_path in done and w.run.meta_path.is_file())


def environment_facts(process: Process, device: str, model) -> dict:
    """Versions and hardware facts for the sidecar; deliberately no environment variables."""
    return {
        **software_facts(),
        "world_size": process.world_size,
        "device": device,
        "model_dtype": str(model.dtype).removeprefix("torch."),
    }


def _printer(process: Process) -> Callable[[str], None]:
    """Rank 0's messages on stderr."""
    def say(message: str) -> None:
        if process.is_main:
            print(message, file=sys.stderr)

    return say
