"""The paper's own numbers (Amulet, ICLR 2025), typed in from the paper's Table 1 and text.

Facts, not code: Table 1's ArmoRM (head 6, instruction following) averages over the four
datasets per model and preference, and Amulet's GPT-4o win rates on the Personal dataset
averaged over models and preferences.
"""

from __future__ import annotations

PAPER_METHODS = ("base", "pref", "beam", "la", "amulet")  # Base, Pref, BS16, LA, Amulet
PAPER_METHOD_LABELS = {"base": "Base", "pref": "Pref", "beam": "BS16", "la": "LA",
                       "amulet": "Amulet"}
PAPER_PREFERENCES = ("creative", "verbose", "concise", "uplifting")
PAPER_DATASETS = (
    "HelpSteer_train",
    "UltraFeedback_truthful_qa",
    "UltraFeedback_ultrachat",
    "personal_preference_eval_preference_data",
)
PERSONAL_DATASET = "personal_preference_eval_preference_data"
PAPER_RM = "RLHFlow/ArmoRM-Llama3-8B-v0.1"
PAPER_RM_LABEL = "dim6"

_TABLE1_AVERAGES = {  # model -> preference -> (Base, Pref, BS16, LA, Amulet)
    "Llama-3.1-8B-Instruct": {
        "creative": (.33, .34, .35, .43, .56), "verbose": (.30, .31, .32, .35, .44),
        "concise": (.38, .42, .43, .51, .57), "uplifting": (.37, .39, .39, .45, .52),
    },
    "Qwen2-7B-Instruct": {
        "creative": (.33, .34, .34, .35, .37), "verbose": (.31, .32, .32, .32, .30),
        "concise": (.41, .47, .49, .55, .55), "uplifting": (.38, .39, .40, .42, .42),
    },
    "Mistral-7B-Instruct-v0.2": {
        "creative": (.32, .33, .34, .37, .40), "verbose": (.30, .30, .31, .32, .31),
        "concise": (.43, .45, .48, .52, .51), "uplifting": (.37, .38, .40, .43, .44),
    },
}

# Amulet vs each baseline, Personal dataset, averaged over models and preferences ("about").
PAPER_PERSONAL_WIN_RATE = {"base": 0.90, "pref": 0.87, "beam": 0.85, "la": 0.73}


def paper_table1_average(model: str, preference: str, method: str) -> float | None:
    """The paper's Table 1 average over the four datasets, or None where it has none."""
    row = _TABLE1_AVERAGES.get(model, {}).get(preference)
    if row is None or method not in PAPER_METHODS:
        return None
    return row[PAPER_METHODS.index(method)]


def paper_models() -> tuple[str, ...]:
    return tuple(_TABLE1_AVERAGES)
