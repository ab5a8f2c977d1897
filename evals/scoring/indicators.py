"""Judge-free text indicators of responses: length, diversity, repetition, sentiment, style.

Each is a pure function of one response (or of a list, where it says so) whose docstring
states its formula. They describe text; none of them measures quality. ``text_indicators``
gathers them over a list of responses.

Tokenisations used below:
- *words*: maximal runs of letters and digits, which may be joined inside by one apostrophe
  or hyphen (``don't``, ``well-known`` are one word each), found by ``words``;
- *treebank tokens*: ``evals.scoring.treebank_words.treebank_words``, the tokens ARGS's metrics
  take from ``nltk.word_tokenize`` (punctuation and clitics such as ``n't`` apart), used by
  distinct-n, rep-n and the degeneracy rules;
- *model tokens*: whatever tokenizer is passed in, for lengths in tokens.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

from evals.errors import EvalError
from evals.scoring.treebank_words import treebank_words

Tokenize = Callable[[str], Sequence]

INDICATORS_LABEL = "judge-free text indicators: descriptive statistics, not quality scores"

_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
# A run of [.!?] ends a sentence where whitespace, a closing quote/bracket or the end follows
# (so not the point inside 3.5); words and such runs, in text order, for ``sentences``.
_WORD_OR_END = re.compile(
    rf"(?P<word>{_WORD.pattern})|(?P<end>[.!?]+)(?=[\s\"'”’)\]]|$)"
)
_SECOND_PERSON = frozenset({"you", "your", "yours", "yourself", "yourselves"})
# 's is a contraction only after these; after other words it is usually a possessive.
_S_CONTRACTING = frozenset({
    "it", "that", "there", "here", "what", "who", "he", "she", "let", "where", "how", "when",
    "why", "everyone", "everything", "nothing", "something", "someone",
})
_CONTRACTION = re.compile(r"^([^\W_]+)['’](t|re|ve|ll|d|m|s)$", re.I)


def _mean_or_nan(values: Sequence[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else float("nan")


# ---- length -------------------------------------------------------------------------------

def words(text: str) -> list[str]:
    """The words of ``text`` (see the module doc): ``"Don't stop, well-known."`` -> 3 words."""
    return _WORD.findall(text)


def length_in_words(text: str) -> int:
    """``len(words(text))``."""
    return len(words(text))


def length_in_tokens(response: str | Sequence[int], tokenize: Tokenize | None = None) -> int:
    """Number of model tokens: ``len(response)`` for a list of token ids, else
    ``len(tokenize(response))``.

    ``tokenize`` must return the ids themselves, e.g.
    ``lambda t: tok.encode(t, add_special_tokens=False)``; calling a Hugging Face tokenizer
    directly returns a mapping, whose length would be its number of fields.
    """
    if not isinstance(response, str):
        return len(response)
    if tokenize is None:
        raise EvalError("length_in_tokens got a text without a tokenize function; pass one "
                        "(e.g. lambda t: tok.encode(t, add_special_tokens=False)) or token ids")
    ids = tokenize(response)
    if isinstance(ids, Mapping):
        raise EvalError("tokenize returned a mapping (a tokenizer's __call__?); pass a "
                        "function returning token ids, e.g. "
                        "lambda t: tok.encode(t, add_special_tokens=False)")
    return len(ids)


def share_hitting_cap(token_counts: Sequence[int], max_new_tokens: int, slack: int = 0) -> float:
    """Share of responses that used the whole budget:
    ``#{i : token_counts[i] >= max_new_tokens - slack} / len(token_counts)`` (NaN if empty).

    With counts from the generator, ``slack = 0`` is exact. With counts from re-encoding the
    decoded text, which can differ from the generated ids by a token or two, a small slack
    keeps capped responses from being missed.
    """
    if max_new_tokens < 1 or slack < 0:
        raise EvalError(f"share_hitting_cap needs max_new_tokens >= 1 and slack >= 0, "
                        f"got {max_new_tokens} and {slack}")
    if not token_counts:
        return float("nan")
    return sum(c >= max_new_tokens - slack for c in token_counts) / len(token_counts)


# ---- diversity and repetition ---------------------------------------------------------------

def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The ``len(tokens) - n + 1`` contiguous n-grams of ``tokens`` (none if fewer tokens)."""
    if n < 1:
        raise EvalError(f"n-gram order must be >= 1, got {n}")
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(text: str, n: int, tokenize: Tokenize = treebank_words) -> float:
    """Per response: ``distinct-n = |set(n-grams)| / |n-grams|`` over ``tokenize(text)``
    (case-sensitive); NaN when the text has fewer than ``n`` tokens.

    ``"the cat the cat"``: distinct-1 = 2/4, distinct-2 = 2/3.
    """
    grams = ngrams(tokenize(text), n)
    return len(set(grams)) / len(grams) if grams else float("nan")


def corpus_distinct_n(texts: Sequence[str], n: int, tokenize: Tokenize = treebank_words) -> float:
    """Corpus level: ``|union of the texts' n-gram sets| / total n-gram count``, n-grams taken
    within each text (none across texts); NaN when there are none.
    """
    unique: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        grams = ngrams(tokenize(text), n)
        unique.update(grams)
        total += len(grams)
    return len(unique) / total if total else float("nan")


def rep_n(text: str, n: int, tokenize: Tokenize = treebank_words) -> float:
    """ARGS's repetition rate of one response, in percent:
    ``rep-n = 100 * (1 - |set(n-grams)| / (|n-grams| + 1))`` over ``tokenize(text)``.

    As in ARGS's ``metrics.py``: per response (a corpus value is the mean over responses),
    on ``nltk.word_tokenize`` tokens (here ``treebank_words``). The ``+ 1`` means a text
    without any repeated n-gram still scores ``100 / (|n-grams| + 1)``, and a text with no
    n-gram at all (fewer than ``n`` tokens; ARGS turns an empty response into ``" "``)
    scores 100, so its ARGS diversity is 0.
    """
    return _rep_percent(tokenize(text), n)


def _rep_percent(tokens: Sequence[str], n: int) -> float:
    grams = ngrams(tokens, n)
    return 100.0 * (1.0 - len(set(grams)) / (len(grams) + 1))


def args_diversity(text: str, tokenize: Tokenize = treebank_words) -> float:
    """ARGS's diversity of one response: ``prod_{n=2..4} (1 - rep-n / 100)``."""
    tokens = tokenize(text)
    return math.prod(1.0 - _rep_percent(tokens, n) / 100.0 for n in (2, 3, 4))


# ---- degenerate responses --------------------------------------------------------------------

def longest_run(tokens: Sequence[str]) -> int:
    """Length of the longest block of one token repeated back to back (0 for no tokens)."""
    best = run = 0
    for i, token in enumerate(tokens):
        run = run + 1 if i and token == tokens[i - 1] else 1
        best = max(best, run)
    return best


def periodic_tail(tokens: Sequence[str], period: int) -> int:
    """Length ``L`` of the longest suffix with ``tokens[i] == tokens[i + period]`` wherever
    both lie in it: the tail that repeats one ``period``-gram, a last partial copy included
    (0 when there are fewer than ``period`` tokens; otherwise at least ``period``).
    """
    if len(tokens) < period:
        return 0
    start = len(tokens) - period
    while start > 0 and tokens[start - 1] == tokens[start - 1 + period]:
        start -= 1
    return len(tokens) - start


def degeneracy(
    text: str,
    *,
    min_run: int = 5,
    run_share: float = 0.5,
    max_loop_n: int = 10,
    min_loop_repeats: float = 3.0,
    loop_share: float = 0.5,
    tokenize: Tokenize = treebank_words,
) -> str | None:
    """Why ``text`` is degenerate, or None. Over ``T = tokenize(text)``, checked in order:

    - ``"empty"``: ``text`` is empty or whitespace only (``len(T) == 0``);
    - ``"repeated_token"``: one token repeated back to back ``R = longest_run(T)`` times with
      ``R >= min_run`` and ``R / len(T) >= run_share``;
    - ``"ngram_loop"``: for some ``n`` in ``2..max_loop_n``, the tail repeating one n-gram,
      ``L = periodic_tail(T, n)``, holds ``L / n >= min_loop_repeats`` copies and covers
      ``L / len(T) >= loop_share`` of the text.

    Loops are looked for at the end because a decoder caught in one stays in it until the
    token budget runs out. A run of one token at the end is periodic with every ``n``, so it
    is also a loop once it holds ``2 * min_loop_repeats`` tokens, whatever ``min_run`` says.
    """
    tokens = tokenize(text)
    if not tokens:
        return "empty"
    run = longest_run(tokens)
    if run >= min_run and run / len(tokens) >= run_share:
        return "repeated_token"
    for n in range(2, max_loop_n + 1):
        tail = periodic_tail(tokens, n)
        if tail / n >= min_loop_repeats and tail / len(tokens) >= loop_share:
            return "ngram_loop"
    return None


def share_degenerate(texts: Sequence[str], **thresholds) -> float:
    """``#{texts with degeneracy(text, **thresholds) is not None} / len(texts)`` (NaN if none)."""
    if not texts:
        return float("nan")
    return sum(degeneracy(t, **thresholds) is not None for t in texts) / len(texts)


# ---- sentiment and readability ---------------------------------------------------------------

@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # its lexicon ships inside

    return SentimentIntensityAnalyzer()


def vader_compound(text: str) -> float:
    """VADER's compound score in [-1, 1] (``vaderSentiment`` package): the sum ``s`` of the
    rule-adjusted lexicon valences, normalised as ``s / sqrt(s**2 + 15)``; 0 for no sentiment words.
    """
    return float(_vader().polarity_scores(text)["compound"])


@lru_cache(maxsize=1)
def _hyphenator():
    import pyphen  # its hyphenation dictionaries ship inside the package

    return pyphen.Pyphen(lang="en_US")


@lru_cache(maxsize=65536)
def syllables(word: str) -> int:
    """Syllables of one word, estimated as hyphenation points + 1 (pyphen, en_US), summed over
    the hyphen-separated parts. Hyphenation never splits off one letter, so words such as
    "idea" (1) or "evaluation" (4) are undercounted; textstat up to 0.7.3 counted the same way.
    """
    parts = [p for p in re.split(r"[-‐]", word) if p]
    return sum(len(_hyphenator().positions(p.lower())) + 1 for p in parts)


def sentences(text: str) -> int:
    """Number of sentences: runs of ``[.!?]`` after a word and before whitespace, a closing
    quote or bracket, or the end; plus one if the last word is not followed by such a run
    (0 for a text without words). ``"Hi!!! Bye"`` -> 2; ``"Pi is 3.14."`` -> 1.
    """
    count, pending_word = 0, False
    for match in _WORD_OR_END.finditer(text):
        if match.lastgroup == "end":
            count += pending_word
            pending_word = False
        else:
            pending_word = True
    return count + pending_word


def flesch_reading_ease(text: str) -> float:
    """Flesch reading ease: ``206.835 - 1.015 * W / S - 84.6 * Y / W`` with ``W`` words,
    ``S = sentences(text)`` and ``Y`` the sum of ``syllables`` over the words; NaN without
    words. Higher is easier (about 90-100: very easy; below 30: very hard).
    """
    text_words = words(text)
    if not text_words:
        return float("nan")
    n_words = len(text_words)
    n_syllables = sum(syllables(w) for w in text_words)
    return 206.835 - 1.015 * n_words / sentences(text) - 84.6 * n_syllables / n_words


# ---- formality markers -----------------------------------------------------------------------

def is_contraction(word: str) -> bool:
    """``X'(t|re|ve|ll|d|m)`` (so ``n't`` too), or ``X's`` for a pronoun-like ``X``
    (it, that, there, let, ...): after a noun, ``'s`` is usually a possessive."""
    match = _CONTRACTION.match(word)
    if match is None:
        return False
    return match.group(2).lower() != "s" or match.group(1).lower() in _S_CONTRACTING


def contraction_rate(text: str) -> float:
    """``#{words w : is_contraction(w)} / #words`` (NaN without words)."""
    text_words = words(text)
    if not text_words:
        return float("nan")
    return sum(map(is_contraction, text_words)) / len(text_words)


def exclamations_per_sentence(text: str) -> float:
    """``count of "!" characters / sentences(text)`` (NaN without words)."""
    n_sentences = sentences(text)
    return text.count("!") / n_sentences if n_sentences else float("nan")


def second_person_rate(text: str) -> float:
    """``#{words whose part before any apostrophe, lower-cased, is you/your/yours/yourself/
    yourselves} / #words`` ("you're" counts; NaN without words)."""
    text_words = words(text)
    if not text_words:
        return float("nan")
    hits = sum(re.split(r"['’]", w)[0].lower() in _SECOND_PERSON for w in text_words)
    return hits / len(text_words)


# ---- all of them over a list -----------------------------------------------------------------

PER_RESPONSE: dict[str, Callable[[str], float]] = {
    "length_words": length_in_words,
    "length_chars": len,  # ARGS's "response_length" is this one
    "distinct_1": lambda t: distinct_n(t, 1),
    "distinct_2": lambda t: distinct_n(t, 2),
    "rep_2": lambda t: rep_n(t, 2),
    "rep_3": lambda t: rep_n(t, 3),
    "rep_4": lambda t: rep_n(t, 4),
    "args_diversity": args_diversity,
    "degenerate": lambda t: float(degeneracy(t) is not None),
    "vader_compound": vader_compound,
    "flesch_reading_ease": flesch_reading_ease,
    "contraction_rate": contraction_rate,
    "exclamations_per_sentence": exclamations_per_sentence,
    "second_person_rate": second_person_rate,
}


def text_indicators(
    responses: Sequence[str],
    *,
    token_counts: Sequence[int] | None = None,
    tokenize: Tokenize | None = None,
    max_new_tokens: int | None = None,
    cap_slack: int = 0,
) -> dict:
    """Every indicator over ``responses``, as ``{"label", "n", "means", "n_defined", "corpus"}``.

    ``means[k]`` is the mean of ``PER_RESPONSE[k]`` over the ``n_defined[k]`` responses where
    it is defined (not NaN); ``"degenerate"``'s mean is the share of degenerate responses.
    ``corpus`` holds ``corpus_distinct_n`` for n = 1, 2. Token lengths come from
    ``token_counts`` or else from ``tokenize``; with either and ``max_new_tokens``,
    ``corpus["share_hitting_cap"]`` is ``share_hitting_cap(counts, max_new_tokens, cap_slack)``.
    """
    if token_counts is not None and len(token_counts) != len(responses):
        raise EvalError(f"text_indicators got {len(token_counts)} token counts for "
                        f"{len(responses)} responses; give one count per response")
    if max_new_tokens is not None and token_counts is None and tokenize is None:
        raise EvalError("text_indicators got max_new_tokens without token_counts or tokenize; "
                        "pass one of them to measure the share of responses hitting the cap")
    if token_counts is None and tokenize is not None:
        token_counts = [length_in_tokens(r, tokenize) for r in responses]
    columns = {name: [float(f(r)) for r in responses] for name, f in PER_RESPONSE.items()}
    if token_counts is not None:
        columns["length_tokens"] = [float(c) for c in token_counts]
    corpus = {f"distinct_{n}": corpus_distinct_n(responses, n) for n in (1, 2)}
    if token_counts is not None and max_new_tokens is not None:
        corpus["share_hitting_cap"] = share_hitting_cap(token_counts, max_new_tokens, cap_slack)
    return {
        "label": INDICATORS_LABEL,
        "n": len(responses),
        "means": {name: _mean_or_nan(values) for name, values in columns.items()},
        "n_defined": {name: sum(not math.isnan(v) for v in values)
                      for name, values in columns.items()},
        "corpus": corpus,
    }
