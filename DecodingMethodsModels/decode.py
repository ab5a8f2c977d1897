"""Stage 3 of a run: the settings every method decodes with, and the loop that turns this
rank's batches of a run into records appended to its partial file."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

from .distributed import Process, RankError
from .outputs import PartialStore
from .plan import Work


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

