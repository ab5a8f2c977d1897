"""Stage 3 of a run: the settings every method decodes with, the backend that decodes, and
the loop that turns this rank's batches of a run into records appended to its partial file.

`BACKENDS` is the one place where "which backend decodes" is chosen: a backend name maps to a
decoder class built like `Decoder` (model, tokenizer, prompts, settings, ...) that turns one
batch of one run into records (`__call__`, `records`) and, where it can, streams (`can_stream`,
`stream`): "hf" (transformers, the engines in engines/; the reference) and "vllm" (backends/).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.pipeline.distributed import Process, RankError
from DecodingMethodsModels.pipeline.outputs import PartialStore
from DecodingMethodsModels.pipeline.plan import Work


def now() -> float:
    return time.perf_counter()


def seed_for_batch(seed: int, batch: int) -> int:
    """A per-batch seed, so sampled runs are reproducible whatever order batches run in."""
    return (seed * 1_000_003 + batch) % (2**63)


@dataclass
class Decoder:
    """The loaded model and all it needs to turn one batch of one run into records."""

    model: object
    tokenizer: object
    prompts: dict[tuple[str, str], tuple[list[list[int]], list[list[int]]]]
    settings: object
    eos_ids: list[int]
    seed: int
    batch_size: int = 8
    continuous_batching: bool = True
    guide: object = None  # guided_runs.Guide: ARGS's or PAD's guide, when a run needs one

    def __call__(self, work: Work, batch: int) -> tuple[list[dict], int]:
        """(records of the batch, generated tokens)."""
        from DecodingMethodsModels.engines.core import NonFiniteScoresError

        rows = work.batches[batch]
        try:
            outputs = self.decode_rows(work, rows, seed_for_batch(self.seed, batch))
        except NonFiniteScoresError as err:
            raise RankError(nan_message(work, batch, self.model, err)) from None
        return self.records(work, rows, outputs), sum(len(ids) for ids in outputs)

    def prompt_rows(self, work: Work, rows: list[int]) -> tuple[list, list]:
        pref_ids, base_ids = self.prompts[(work.run.preference, work.run.dataset.name)]
        return [pref_ids[i] for i in rows], [base_ids[i] for i in rows]

    def decode_rows(self, work: Work, rows: list[int], seed: int) -> list[list[int]]:
        """Generated ids of the questions at `rows`, as one batch seeded by `seed`."""
        from DecodingMethodsModels.pipeline.methods import METHOD_RUNNERS

        pref_rows, base_rows = self.prompt_rows(work, rows)
        if work.run.guided is not None:
            return self.guide.decode(work.run.guided, pref_rows, base_rows, seed)
        return METHOD_RUNNERS[work.run.method](self.model, pref_rows, base_rows, self.settings,
                                               seed)

    def records(self, work: Work, rows: list[int], outputs: list[list[int]]) -> list[dict]:
        questions = work.run.dataset.questions
        return [
            {"index": questions[i].index, "question": questions[i].question,
             "preference": work.run.preference,
             "response": decode_response(self.tokenizer, ids, self.eos_ids)}
            for i, ids in zip(rows, outputs, strict=True)
        ]

    def batch_notes(self, work: Work, rows: list[int]) -> dict:
        """Extra fields of a finished batch's partial entry (none on hf)."""
        return {}

    def can_stream(self, work: Work) -> bool:
        from DecodingMethodsModels.pipeline.methods import STREAMING_METHODS

        if not self.continuous_batching:
            return False
        if work.run.guided is not None:  # a sampled run draws for its whole batch at once
            return work.run.guided.mode == "greedy"
        return work.run.method in STREAMING_METHODS and not self.settings.sampling.do_sample

    def stream(self, work: Work, positions: list[int]):
        """(position, generated ids) of each question at `positions` as it finishes, with
        continuous batching over all of them."""
        from DecodingMethodsModels.engines.core import NonFiniteScoresError

        try:
            for k, ids in self.stream_rows(work, positions):
                yield positions[k], ids
        except NonFiniteScoresError as err:
            bad = [positions[k] for k in err.rows] or positions
            batch = next(b for b, rows in enumerate(work.batches) if bad[0] in rows)
            raise RankError(nan_message(work, batch, self.model, err, bad)) from None

    def stream_rows(self, work: Work, positions: list[int]):
        """(k, generated ids) of the k-th question of `positions` as it finishes."""
        from DecodingMethodsModels.pipeline.methods import stream_method

        pref_rows, base_rows = self.prompt_rows(work, positions)
        if work.run.guided is not None:
            return self.guide.stream(work.run.guided, pref_rows, base_rows, self.batch_size)
        return stream_method(work.run.method, self.model, pref_rows, base_rows, self.settings,
                             self.batch_size)


class VllmDecoder(Decoder):
    """The vLLM backend (backends/): `model` is a backends.vllm_model.VllmModel, which decodes
    base, pref, la, amulet and implicit PAD inside vLLM with the rules of rules/. It draws a
    sampled token per question (seeded by the run's seed and the question's index), so every
    run streams, sampled or not."""

    def question_seeds(self, work: Work, rows: list[int]) -> list[int]:
        from DecodingMethodsModels.backends.vllm_model import question_seeds

        return question_seeds(self.seed, [work.run.dataset.questions[i].index for i in rows])

    def decode_rows(self, work: Work, rows: list[int], seed: int) -> list[list[int]]:
        pref_rows, base_rows = self.prompt_rows(work, rows)
        self._started(rows)
        return self.model.decode(work.run, pref_rows, base_rows, self.settings,
                                 self.question_seeds(work, rows))

    def can_stream(self, work: Work) -> bool:
        return self.continuous_batching

    def stream_rows(self, work: Work, positions: list[int]):
        pref_rows, base_rows = self.prompt_rows(work, positions)
        self._started(positions)
        return self.model.stream(work.run, pref_rows, base_rows, self.settings,
                                 self.question_seeds(work, positions))


    def _started(self, positions: list[int]) -> None:
        """The driver's job k of the next call is the question at positions[k]."""
        self._positions = positions
        self.model.driver.reran.clear()  # a beam run leaves no stale re-runs behind

    def batch_notes(self, work: Work, rows: list[int]) -> dict:
        """The batch's pairs that vLLM decoded again, with why (vllm_pair_spec's verdicts):
        {"pairs_rerun": [{"index": question index, "reason": ...}, ...]}."""
        wanted, questions = set(rows), work.run.dataset.questions
        return {"pairs_rerun": [
            {"index": questions[self._positions[k]].index, "reason": reason}
            for k, reason in self.model.driver.reran if self._positions[k] in wanted]}


BACKENDS: dict[str, type] = {"hf": Decoder, "vllm": VllmDecoder}
DEFAULT_BACKEND = "hf"


def decoder_class(config) -> type:
    """The decoder class of the run's backend (`config.backend`, "hf" where the configuration
    names none); an unknown name is a UserError listing the known ones."""
    name = getattr(config, "backend", None) or DEFAULT_BACKEND
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; use one of: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name]


def decode_share(config, work: Work, process: Process, decoder: Decoder, bar) -> None:
    """Decode this rank's missing batches of one run, each appended to disk when finished."""
    if not work.mine:
        return
    store = PartialStore(work.run.part_path(process.rank), work.part_fingerprint,
                         config.to_dict())
    try:
        if decoder.can_stream(work):
            stream_share(work, decoder, store, bar)
            return
        for b in work.mine:
            started = now()
            records, tokens = decoder(work, b)
            store.append(b, records, seconds=round(now() - started, 4), tokens=tokens,
                         **decoder.batch_notes(work, work.batches[b]))
            bar.update(len(records))
            bar.batch(tokens)
    finally:
        store.close()


def stream_share(work: Work, decoder: Decoder, store: PartialStore, bar) -> None:
    """This rank's batches decoded as one stream (a question joins as soon as a slot frees);
    each fixed batch is appended to disk once its last question finishes, so resuming and
    the final file are as with batch-by-batch decoding. A batch's seconds are the time since
    the previous append."""
    batch_of = {i: b for b in work.mine for i in work.batches[b]}
    finished: dict[int, dict[int, list[int]]] = {b: {} for b in work.mine}
    positions = [i for b in work.mine for i in work.batches[b]]
    last = now()
    for position, ids in decoder.stream(work, positions):
        b = batch_of[position]
        finished[b][position] = ids
        bar.update(1)
        if len(finished[b]) == len(work.batches[b]):
            done = finished.pop(b)
            outputs = [done[i] for i in work.batches[b]]
            records = decoder.records(work, work.batches[b], outputs)
            tokens = sum(len(ids) for ids in outputs)
            store.append(b, records, seconds=round(now() - last, 4), tokens=tokens,
                         **decoder.batch_notes(work, work.batches[b]))
            bar.batch(tokens)
            last = now()


def resolve_penalties(config, model):
    """The penalties every method applies, and what the checkpoint's generation config set.

    By default none of the checkpoint's settings reach any method (a warning names them);
    with --use_model_generation_config its repetition penalty and n-gram ban fill what the
    command line left unset, for every method alike.
    """
    from DecodingMethodsModels.pipeline.methods import checkpoint_generation_settings
    from DecodingMethodsModels.rules.penalties import Penalties

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


def nan_message(work: Work, batch: int, model, err: Exception,
                positions: list[int] | None = None) -> str:
    import torch

    rows = work.batches[batch] if positions is None else positions
    indices = [work.run.dataset.questions[i].index for i in rows]
    hint = ("the weights themselves give NaN" if model.dtype == torch.float32
            else "try --dtype float32")
    return (f"{work.run.label}: the scores became NaN in batch {batch} (question indices "
            f"{indices}): {err}; {hint}")


def decode_settings(config, eos_ids: list[int], pad_id: int, penalties=None):
    from DecodingMethodsModels.pipeline.methods import CoSteerSettings, DecodeSettings
    from DecodingMethodsModels.rules.penalties import Penalties
    from DecodingMethodsModels.rules.sampling import SamplingSettings

    sampling = SamplingSettings(config.do_sample, config.temperature, config.top_k, config.top_p)
    return DecodeSettings(
        max_new_tokens=config.max_new_tokens, eos_ids=eos_ids, pad_id=pad_id, sampling=sampling,
        penalties=penalties or Penalties(),
        num_beams=config.num_beams, reinforce_ratio=config.reinforce_ratio,
        iteration_num=config.iteration_num, alpha=config.alpha,
        player_lambda=config.player_lambda, eta=config.eta, amulet_solver=config.amulet_solver,
        costeer=CoSteerSettings(
            config.costeer_iterations, config.costeer_alpha, config.costeer_beta,
            config.costeer_lambda, config.costeer_eta, config.costeer_solver),
    )


def decode_response(tokenizer, ids: list[int], eos_ids: list[int]) -> str:
    if ids and ids[-1] in eos_ids:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()

