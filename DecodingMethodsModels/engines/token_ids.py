"""Whether a guide (ARGS's reward model, PAD's PersRM) can read the decoding model's token ids.

ARGS's reward model and PAD's first rule read the guide's outputs at the decoding model's ids, so
every id the decoding model reads or writes must mean the same token to the guide. Two
tokenizers *give the same ids* here when

1. every token string of the decoding model's own vocabulary (the BPE or SentencePiece pieces,
   not its added tokens: the strings any text can be split into) has the same id in the guide's;
2. every id of the run's prompts names the same token in both (the chat template's special
   tokens, which live among the added tokens);
3. the text of every prompt is encoded to the same ids by both (same pre-tokenisation, merges
   and normalisation).

Added tokens that neither text nor the prompts produce may differ: Llama-3.1 and Llama-3 give the
same ids (3.1 renames reserved special tokens, e.g. 128008 `<|eom_id|>`), as PAD.py assumes when
it reads PAD's Llama-3 PersRM with a Llama-3.x decoder. Qwen2 or Mistral with a Llama-3 guide do
not: PAD's second rule (re-encoded text, retokenized_pad.py) is then the way to read such a guide.

Without tokenizers (the library called with models alone), the models' configurations are the
only evidence: a guide whose LM head or embedding is smaller than the decoding model's
vocabulary, or whose configured BOS id differs, cannot read the decoding model's ids.
"""

from __future__ import annotations

from DecodingMethodsModels.engines.guided_settings import vocabulary_size
from DecodingMethodsModels.errors import UserError

SECOND_RULE = ("for PAD's second rule (the text re-encoded by the PersRM's tokenizer) pass "
               "retokenizer=Retokenizer(tokenizer, persrm_tokenizer)")


def id_differences(tokenizer, other, prompt_ids=(), limit: int = 3) -> list[str]:
    """Up to `limit` reasons why `other` does not give `tokenizer`'s ids (module docstring,
    conditions 1 to 3); empty when it does. `prompt_ids`: the decoding model's prompts."""
    found: list[str] = []
    theirs = other.get_vocab()
    added = tokenizer.get_added_vocab()
    for token, index in tokenizer.get_vocab().items():
        if token not in added and theirs.get(token) != index:
            found.append(f"{token!r} is {index} to the decoding model, "
                         f"{theirs.get(token)} to the guide")
            if len(found) >= limit:
                return found
    prompts = [list(p) for p in prompt_ids]
    used = sorted({i for p in prompts for i in p})
    for index, ours, other_token in zip(used, tokenizer.convert_ids_to_tokens(used),
                                        other.convert_ids_to_tokens(used), strict=True):
        if ours != other_token:
            found.append(f"prompt id {index} is {ours!r} to the decoding model, "
                         f"{other_token!r} to the guide")
            if len(found) >= limit:
                return found
    texts = tokenizer.batch_decode(prompts) if prompts else []
    mine = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    yours = other(texts, add_special_tokens=False)["input_ids"] if texts else []
    for text, a, b in zip(texts, mine, yours, strict=True):
        if a != b:
            found.append(f"the prompt {text[:40]!r}... is encoded to other ids")
            if len(found) >= limit:
                break
    return found


def check_same_tokenizer(tokenizer, other, role: str = "reward model", prompt_ids=()) -> None:
    """A one-line UserError unless `other` gives `tokenizer`'s ids (`id_differences`): the
    `role`'s outputs are read at the decoding model's ids."""
    found = id_differences(tokenizer, other, prompt_ids, limit=1)
    if found:
        hint = f"; {SECOND_RULE}" if role == "PersRM" else ": they must share one"
        raise UserError(f"the {role}'s tokenizer gives other ids than the decoding model's "
                        f"({found[0]}){hint}")


def check_guide_reads_ids(model, guide, role: str, tokenizers=None, prompt_ids=()) -> None:
    """A one-line UserError unless `guide` can be read at `model`'s ids. With `tokenizers`
    (the decoding model's, the guide's): `check_same_tokenizer` on them and the prompts;
    without: the guide's vocabulary not smaller than the model's, and the same configured BOS
    id where both configurations name one."""
    if tokenizers is not None:
        check_same_tokenizer(*tokenizers, role=role, prompt_ids=prompt_ids)
        return
    hint = f"; {SECOND_RULE}" if role == "PersRM" else ": they must share one tokenizer"
    ours = vocabulary_size(model)
    head = guide.get_output_embeddings() if role == "PersRM" else None
    theirs = (head if head is not None else guide.get_input_embeddings()).weight.shape[0]
    if theirs < ours:
        raise UserError(f"the {role} reads {theirs} token ids but the decoding model writes "
                        f"{ours}{hint}")
    bos = [getattr(getattr(m, "config", None), "bos_token_id", None) for m in (model, guide)]
    if None not in bos and bos[0] != bos[1]:
        raise UserError(f"the {role}'s BOS id is {bos[1]}, the decoding model's {bos[0]}: "
                        f"another tokenizer, whose outputs would be read at ids that mean other "
                        f"tokens{hint}")
