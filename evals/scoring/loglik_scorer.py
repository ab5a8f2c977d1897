"""A local scorer every user has: the embedded model's mean log-likelihood of a response.

``--scorer loglik`` reads each conversation (the prompt ``--scorer_prompt`` shows as the user
turn, the response as the assistant turn, rendered with the embedded SmolLM2-135M-Instruct's
chat template) and reports, per response,

    mean_logprob = (1 / n) * sum_{t in response} log p(y_t | conversation before t)

over the n tokens of the assistant turn, its end-of-turn token included (how likely the model
finds the response *and* stopping there), with ``log p`` the fp32 log-softmax of the model's
logits. It needs no hub and no GPU. **It is not a reward model**: it measures how typical the
text is for this 135M model given the prompt (its own greedy answers score high), not how well
it follows the preference; use it to see what the evaluation produces, not to rank methods.
"""

from __future__ import annotations

from collections.abc import Sequence

from evals.errors import EvalError
from evals.scoring.reward_model import RewardModel, right_pad

LOGLIK = "loglik"
LOGLIK_IMPLEMENTATION = "causal-lm-loglik"
LOGLIK_HEAD = "mean_logprob"
_PAD_ID = 0  # any id works behind the attention mask; a row holding it is scored alone
_DEFAULT_CONTEXT = 2048


def generation_header(tokenizer) -> list[int]:
    """The ids the chat template puts before an assistant turn (``<|im_start|>assistant\\n``
    for ChatML): the generation prompt's ids beyond those of the bare user turn."""
    turn = [{"role": "user", "content": "x"}]
    bare = tokenizer.apply_chat_template(turn, tokenize=False)
    asking = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    if not asking.startswith(bare) or asking == bare:
        raise EvalError("the loglik scorer's chat template has no generation prompt to find "
                        "the response by")
    return list(tokenizer(asking[len(bare):], add_special_tokens=False)["input_ids"])


def response_span(ids: Sequence[int], header: Sequence[int], end_id: int | None
                  ) -> tuple[int, int]:
    """``(start, stop)``: the response's positions in ``ids``, from just after the last
    ``header`` through the first ``end_id`` after it (the end of turn), or to the end.

    >>> response_span([5, 1, 2, 7, 8, 9, 3, 4], [1, 2], 9)
    (3, 6)
    >>> response_span([1, 2, 7], [1, 2], 9)
    (2, 3)
    """
    width = len(header)
    starts = [k + width for k in range(len(ids) - width + 1) if list(ids[k:k + width]) == header]
    if not starts:
        raise EvalError("a conversation holds no assistant header: cannot find its response")
    start = starts[-1]
    ends = [k for k in range(start, len(ids)) if ids[k] == end_id]
    return start, (ends[0] + 1 if ends else len(ids))


def mean_logprobs(logits, input_ids, spans: list[tuple[int, int]]) -> list[dict]:
    """Per row ``{"mean_logprob", "n_response_tokens"}``: the mean over positions t of its
    span of ``log_softmax(logits[t - 1])[input_ids[t]]`` in fp32 (``logits``: (B, L, V))."""
    import torch

    out = []
    for row, (start, stop) in enumerate(spans):
        if stop <= start or start < 1:
            out.append({"mean_logprob": None, "n_response_tokens": 0})
            continue
        log_probs = torch.log_softmax(logits[row, start - 1:stop - 1].float(), dim=-1)  # (n, V)
        targets = input_ids[row, start:stop].to(log_probs.device)  # (n,)
        picked = log_probs.gather(-1, targets[:, None])[:, 0]  # (n,)
        out.append({"mean_logprob": float(picked.mean()), "n_response_tokens": stop - start})
    return out


def score_loglik_rows(rm: RewardModel, id_lists: Sequence[Sequence[int]]) -> list[dict]:
    """One right-padded batch through the causal LM; :func:`mean_logprobs` per row."""
    import torch

    model = rm.ensure_model()
    header, end_id = rm.config["header_ids"], rm.config["end_id"]
    spans = [response_span(ids, header, end_id) for ids in id_lists]
    input_ids, mask = right_pad(id_lists, rm.pad_id)
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
    return mean_logprobs(logits, input_ids, spans)


def load_loglik_scorer(device: str, dtype: str, max_length: int | None) -> RewardModel:
    """The embedded model as a :class:`RewardModel`-shaped scorer (weights on first use)."""
    from DecodingMethodsModels.errors import UserError
    from DecodingMethodsModels.models.loading import (
        EMBEDDED_MODEL,
        load_model,
        load_tokenizer,
        resolve_model,
    )
    from evals.scoring.reward_model import resolve_device, resolve_dtype

    try:
        source = resolve_model(EMBEDDED_MODEL)
        tokenizer = load_tokenizer(source)
    except UserError as exc:
        raise EvalError(f"--scorer {LOGLIK}: {exc}") from None
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    context = tokenizer.model_max_length
    context = context if isinstance(context, int) and 0 < context < 10**9 else _DEFAULT_CONTEXT
    if max_length is not None:
        context = min(context, max_length)

    def loader():
        try:
            return load_model(source, device, str(torch_dtype).removeprefix("torch."))
        except UserError as exc:
            raise EvalError(f"--scorer {LOGLIK}: {exc}") from None

    config = {"header_ids": generation_header(tokenizer), "end_id": tokenizer.eos_token_id,
              "model": EMBEDDED_MODEL}
    return RewardModel(
        name=f"{LOGLIK}:{EMBEDDED_MODEL}", tokenizer=tokenizer, model=None, loader=loader,
        implementation=LOGLIK_IMPLEMENTATION, pad_id=_PAD_ID, max_length=context,
        dtype=str(torch_dtype).removeprefix("torch."), input_format="chat_template",
        config=config, rows_scorer=score_loglik_rows,
    )
