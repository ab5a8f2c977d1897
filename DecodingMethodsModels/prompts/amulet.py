"""The experiment's prompts, verbatim as the paper builds them, tokenised (the package
README: Prompts)."""

from __future__ import annotations

SYSTEM_PROMPT = (
    "You are an AI designed to provide the most helpful, clear, and concise responses. "
    "Focus on giving actionable information, ensuring accuracy and detail without "
    "overwhelming the user. You should also be patient, polite, and calm. Avoid unnecessary "
    "complexity and always prioritize practical, user-friendly advice. {preference}"
)

PREFERENCE_NAMES = (
    "creative", "sycophantic", "verbose", "complex", "formal", "pleasant", "concise", "uplifting",
)


def preference_sentence(name: str) -> str:
    """The preference sentence for a named preference."""
    return f"Your answer should be {name} as much as possible."


def system_text(preference: str) -> str:
    """The system prompt; `preference` is a sentence, or "" for the base prompt."""
    return SYSTEM_PROMPT.format(preference=preference)


def build_messages(question: str, preference: str, system_role: bool = True) -> list[dict]:
    """Chat messages for one prompt; folds the system text into the user turn if asked."""
    system = system_text(preference)
    if system_role:
        return [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return [{"role": "user", "content": f"{system}\n\n{question}"}]


def template_accepts_system(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders a system turn (Mistral v0.2/v0.3 do not)."""
    probe = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    try:
        tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    except Exception:  # templates signal rejection with raise_exception -> TemplateError
        return False
    return True


def encode_prompt(
    tokenizer, question: str, preference: str, system_role: bool, reference: bool = False
) -> list[int]:
    """Token ids of the templated prompt with the assistant header, exactly one BOS.

    `reference=True` reproduces the paper's code instead: no assistant header, and the
    templated text tokenised again with special tokens (a second BOS where the template has one).
    """
    messages = build_messages(question, preference, system_role)
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=not reference
    )
    # the template already writes any BOS it wants; adding special tokens again would double it
    return tokenizer(text, add_special_tokens=reference)["input_ids"]
