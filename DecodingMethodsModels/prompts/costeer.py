"""CoSteer's own prompts for Amulet's datasets (`--prompt_style costeer`), as its public code
builds them: the system turn "You are a helpful assistant.", the user turn the question (the
plain prompt) or the question followed by a newline and the preference (the personalised
prompt), with the model's chat template and its assistant header."""

from __future__ import annotations

COSTEER_SYSTEM = "You are a helpful assistant."


def costeer_sentence(name: str) -> str:
    """CoSteer's preference sentence for a named preference (no closing period, as its code)."""
    return f"Your answer should be as {name} as possible"


def costeer_user_text(question: str, preference: str) -> str:
    """The user turn: the question, then a newline and the preference when there is one."""
    return f"{question}\n{preference}" if preference else question


def encode_costeer_prompt(tokenizer, question: str, preference: str,
                          system_role: bool = True) -> list[int]:
    """Token ids of CoSteer's prompt (`preference` "" for the plain one), the templated text
    tokenised once (the template writes any BOS it wants). A template without a system role
    gets the system text folded into the user turn, as the project's prompts do."""
    user = costeer_user_text(question, preference)
    if system_role:
        messages = [{"role": "system", "content": COSTEER_SYSTEM},
                    {"role": "user", "content": user}]
    else:
        messages = [{"role": "user", "content": f"{COSTEER_SYSTEM}\n\n{user}"}]
    try:  # CoSteer turns a reasoning model's thinking off; other templates ignore the flag
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             enable_thinking=False)
    except TypeError:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
