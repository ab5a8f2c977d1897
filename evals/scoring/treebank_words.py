"""Word tokens as ARGS's ``metrics.py`` sees them, without NLTK or its downloaded data.

ARGS computes rep-n on ``nltk.word_tokenize(text)``: Punkt sentence splitting (a trained
model that NLTK downloads), then the Penn-Treebank-style rules of ``NLTKWordTokenizer`` on
each sentence. This module re-states those rules as a handful of regular expressions and
replaces Punkt by one heuristic: a sentence ends at ``.``, ``!`` or ``?`` (optionally
followed by closing quotes or brackets) before whitespace and a character that is not a
lower-case letter. Known differences from NLTK: abbreviations Punkt knows ("Dr. Smith",
"e.g. This") are split where Punkt would not, and NLTK's ```` `` ````/``''`` quote marks
are produced for straight double quotes only.

>>> treebank_words('She said, "I can\\'t go." Then she left...')
['She', 'said', ',', '``', 'I', 'ca', "n't", 'go', '.', "''", 'Then', 'she', 'left', '...']
"""

from __future__ import annotations

import re

_SENTENCE_BREAK = re.compile(
    r"(?:(?<=[.!?])|(?<=[.!?][\"')\]’”]))\s+(?=[^a-z\s])"
)
# Applied in order to one sentence; each pads what it matches with spaces.
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"[«“‘„»”’]|`+"), r" \g<0> "),
    (re.compile(r'^"|(?<=[\s(\[{<])"'), " `` "),  # an opening straight quote
    (re.compile(r'"'), " '' "),  # any other straight quote closes
    (re.compile(r"(?<![\w'])'(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)", re.I), " ' "),
    (re.compile(r"(?<!\.)\.(?=[\]\)}>\"'»”’\s]*$)"), " . "),  # the sentence's final period
    (re.compile(r"[,:](?!\d)"), r" \g<0> "),  # not inside numbers such as 3,000 or 10:30
    (re.compile(r"\.{2,}|--|[;@#$%&*?!\[\](){}<>\u2012-\u2015]"), r" \g<0> "),
    (re.compile(r"(?<=[^'\s])'(?=\s|$)"), " ' "),  # a closing single quote
    (re.compile(r"(?<=[^'\s])(n't|'ll|'re|'ve|'s|'m|'d)(?=\s|$)", re.I), r" \1 "),
    (re.compile(r"(?i)\b(can)(not)\b"), r"\1 \2"),
    (re.compile(r"(?i)\b(gon|wan)(na)\b"), r"\1 \2"),
    (re.compile(r"(?i)\b(got)(ta)\b"), r"\1 \2"),
    (re.compile(r"(?i)\b(gim|lem)(me)\b"), r"\1 \2"),
]


def split_sentences(text: str) -> list[str]:
    """Cut ``text`` at ``[.!?]`` + optional closing quote/bracket + whitespace + not [a-z]."""
    return [s for s in _SENTENCE_BREAK.split(text) if s.strip()]


def treebank_words(text: str) -> list[str]:
    """Penn-Treebank-style tokens of ``text``, sentence by sentence (see the module doc)."""
    tokens: list[str] = []
    for sentence in split_sentences(text):
        for pattern, replacement in _RULES:
            sentence = pattern.sub(replacement, sentence)
        tokens.extend(sentence.split())
    return tokens
