"""Judge-free text indicators on hand-made strings whose counts are worked out in comments."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

from evals.errors import EvalError
from evals.scoring.indicators import (
    INDICATORS_LABEL,
    PER_RESPONSE,
    args_diversity,
    contraction_rate,
    corpus_distinct_n,
    degeneracy,
    distinct_n,
    exclamations_per_sentence,
    flesch_reading_ease,
    length_in_tokens,
    length_in_words,
    longest_run,
    periodic_tail,
    rep_n,
    second_person_rate,
    sentences,
    share_degenerate,
    share_hitting_cap,
    syllables,
    text_indicators,
    vader_compound,
    words,
)
from evals.scoring.treebank_words import treebank_words

REPO = Path(__file__).resolve().parents[1]
# Sure , here is the answer .  = 7 tokens, then "The answer is yes ." (5 tokens) three times,
# then a cut copy "The answer is": 7 + 15 + 3 = 25 tokens.
LOOPING = ("Sure, here is the answer. The answer is yes. The answer is yes. "
           "The answer is yes. The answer is")
PLAIN = "Paris is the capital of France. It lies on the Seine and has about two million people."


# ---- tokenisation ------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    # expected lists are what NLTK's word tokenizer gives for the same sentences
    ("I can't go.", ["I", "ca", "n't", "go", "."]),
    ("It costs $3,000.50, right?", ["It", "costs", "$", "3,000.50", ",", "right", "?"]),
    ("I cannot (really) go -- sorry; it's 10:30!",
     ["I", "can", "not", "(", "really", ")", "go", "--", "sorry", ";", "it", "'s", "10:30", "!"]),
    ("The dogs' bowls", ["The", "dogs", "'", "bowls"]),
    ("Stop. Go now.", ["Stop", ".", "Go", "now", "."]),
])
def test_treebank_words_split_punctuation_and_clitics_like_nltk(text, expected):
    assert treebank_words(text) == expected


def test_words_keep_apostrophes_and_hyphens_inside_one_word():
    assert words("Don't stop, well-known 3.5!") == ["Don't", "stop", "well-known", "3", "5"]
    assert length_in_words("  ") == 0


# ---- lengths -----------------------------------------------------------------------------

def test_length_in_tokens_counts_ids_or_the_tokenizer_output():
    assert length_in_tokens([5, 6, 7]) == 3
    assert length_in_tokens("a b c d", tokenize=str.split) == 4


def test_length_in_tokens_refuses_text_without_tokenizer_and_mapping_output():
    with pytest.raises(EvalError, match="tokenize"):
        length_in_tokens("a b")
    with pytest.raises(EvalError, match="mapping"):
        length_in_tokens("a b", tokenize=lambda t: {"input_ids": [1, 2], "attention_mask": [1, 1]})


def test_share_hitting_cap_counts_responses_at_the_budget():
    assert share_hitting_cap([3, 8, 8, 5], 8) == 0.5
    assert share_hitting_cap([3, 8, 8, 5], 8, slack=3) == 0.75  # >= 5
    assert math.isnan(share_hitting_cap([], 8))
    with pytest.raises(EvalError, match="max_new_tokens"):
        share_hitting_cap([1], 0)


# ---- distinct-n, rep-n, diversity ------------------------------------------------------------

def test_distinct_n_is_unique_over_total_ngrams_per_response():
    assert distinct_n("the cat the cat", 1) == 2 / 4
    assert distinct_n("the cat the cat", 2) == 2 / 3  # (the cat), (cat the), (the cat)
    assert math.isnan(distinct_n("alone", 2))


def test_corpus_distinct_n_pools_ngrams_across_responses():
    texts = ["the cat", "the dog"]
    assert corpus_distinct_n(texts, 1) == 3 / 4  # {the, cat, dog} over 4 unigrams
    assert corpus_distinct_n(texts, 2) == 2 / 2  # no bigram spans two texts
    assert [distinct_n(t, 1) for t in texts] == [1.0, 1.0]
    assert math.isnan(corpus_distinct_n([""], 1))


def test_rep_n_matches_args_formula_by_hand():
    text = "the cat sat the cat sat"
    # 5 bigrams, 3 unique: 100 (1 - 3/6); 4 trigrams, 3 unique: 100 (1 - 3/5);
    # 3 four-grams, all unique: 100 (1 - 3/4)
    assert rep_n(text, 2) == pytest.approx(50.0)
    assert rep_n(text, 3) == pytest.approx(40.0)
    assert rep_n(text, 4) == pytest.approx(25.0)
    assert args_diversity(text) == pytest.approx(0.5 * 0.6 * 0.75)


def test_rep_n_splits_punctuation_off_words_as_nltk_does():
    text = "The cat sat, the cat sat."
    # The cat sat , the cat sat . -> 7 bigrams, 6 unique ("cat sat" twice): 100 (1 - 6/8)
    assert rep_n(text, 2) == pytest.approx(25.0)
    # split on whitespace: 5 bigrams, all unique ("sat," and "sat." differ): 100 (1 - 5/6)
    assert rep_n(text, 2, tokenize=str.split) == pytest.approx(100 / 6)


def test_rep_n_of_a_text_without_ngrams_is_100_and_its_diversity_0():
    assert rep_n("hello", 2) == 100.0
    assert rep_n("", 4) == 100.0
    assert args_diversity("") == 0.0


# ---- degenerate responses --------------------------------------------------------------------

def test_longest_run_and_periodic_tail_by_hand():
    assert longest_run(list("abbbcb")) == 3
    assert longest_run([]) == 0
    assert periodic_tail(list("xabab"), 2) == 4
    assert periodic_tail(list("abc"), 2) == 2  # one copy of the last bigram, nothing repeats
    assert periodic_tail(list("a"), 2) == 0


@pytest.mark.parametrize("text, kind", [
    ("", "empty"),
    (" \n\t ", "empty"),
    ("no no no no no no", "repeated_token"),
    ("!!!!!!", "repeated_token"),  # six "!" tokens
    (LOOPING, "ngram_loop"),  # tail of 19 tokens with period 5: 3.8 copies, 19/25 of the text
    (PLAIN, None),
    # a run of 5 inside 14 tokens covers less than half; no tail holds 3 copies
    ("I think that this is fine and good. okay okay okay okay okay", None),
    ("1. Apples 2. Pears 3. Plums 4. Figs", None),
])
def test_degeneracy_flags_empty_runs_and_tail_loops_only(text, kind):
    assert degeneracy(text) == kind


def test_degeneracy_thresholds_are_parameters():
    assert degeneracy(LOOPING, min_loop_repeats=4) is None  # 3.8 copies
    assert degeneracy(LOOPING, loop_share=0.8) is None  # covers 19/25 = 0.76
    assert degeneracy(LOOPING, max_loop_n=4) is None  # the period is 5
    assert degeneracy("no no no no no no, fine.") == "repeated_token"  # 6 of 9 tokens
    assert degeneracy("no no no no no no, fine.", min_run=7) is None


def test_a_run_at_the_tail_is_also_a_loop_of_its_doubled_token():
    # six "no" are three copies of the bigram "no no", whatever min_run says
    assert degeneracy("no no no no no no", min_run=7) == "ngram_loop"


def test_share_degenerate_is_the_flagged_fraction():
    assert share_degenerate(["", PLAIN, "no no no no no", LOOPING]) == 3 / 4
    assert math.isnan(share_degenerate([]))


# ---- sentiment and readability ---------------------------------------------------------------

def test_vader_compound_has_the_sign_of_the_sentiment():
    assert vader_compound("I love this, it is wonderful and makes me happy!") > 0
    assert vader_compound("This is terrible, I hate it and it makes me sad.") < 0
    assert vader_compound("The table is brown.") == 0.0


def test_vader_compound_of_one_lexicon_word_is_its_normalised_valence():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    valence = SentimentIntensityAnalyzer().lexicon["good"]
    assert vader_compound("good") == pytest.approx(valence / math.sqrt(valence**2 + 15), abs=1e-4)


def test_syllables_are_hyphenation_points_plus_one_per_part():
    assert [syllables(w) for w in ("cat", "table", "beautiful", "well-known")] == [1, 2, 3, 2]


@pytest.mark.parametrize("text, count", [
    ("Hi!!! Bye", 2), ("Pi is 3.14.", 1), ("No end mark", 1), ("Wait... what?!", 2), ("", 0),
    ('He said "go." Then he left.', 2),
])
def test_sentences_count_terminal_punctuation_runs(text, count):
    assert sentences(text) == count


def test_flesch_reading_ease_matches_formula_on_hand_counts():
    # 6 one-syllable words, 1 sentence
    assert flesch_reading_ease("The cat sat on the mat.") == pytest.approx(
        206.835 - 1.015 * 6 / 1 - 84.6 * 6 / 6)
    # Read-ing is fun. We like it. -> 6 words, 2 sentences, 7 syllables
    assert flesch_reading_ease("Reading is fun. We like it.") == pytest.approx(
        206.835 - 1.015 * 6 / 2 - 84.6 * 7 / 6)
    assert math.isnan(flesch_reading_ease("?!"))


def test_flesch_reading_ease_ranks_an_easy_sentence_above_a_hard_one():
    easy = "The dog ran to the park. It was fun."
    hard = ("Notwithstanding the aforementioned considerations, organizational restructuring "
            "necessitates comprehensive evaluation of institutional accountability.")
    assert flesch_reading_ease(easy) > 80 > 0 > flesch_reading_ease(hard)


# ---- formality markers -----------------------------------------------------------------------

def test_contraction_rate_counts_contractions_but_not_possessives():
    # 8 words; don't, it's, you're are contractions; John's is a possessive
    assert contraction_rate("I don't think it's John's car, you're right") == 3 / 8
    assert math.isnan(contraction_rate(""))


def test_exclamations_per_sentence_by_hand():
    assert exclamations_per_sentence("Wow! Great! Okay.") == 2 / 3
    assert exclamations_per_sentence("Hi!!! Bye") == 3 / 2
    assert math.isnan(exclamations_per_sentence(""))


def test_second_person_rate_counts_you_forms_case_insensitively():
    text = "You and your friends, yourself included, you're welcome. Thank YOU."
    # 10 words: You, your, yourself, you're, YOU are second person
    assert second_person_rate(text) == 5 / 10
    assert second_person_rate("We thank them.") == 0.0


# ---- the aggregate ----------------------------------------------------------------------------

def test_text_indicators_means_are_means_of_the_per_response_values():
    responses = [PLAIN, "", "no no no no no no", LOOPING]
    report = text_indicators(responses, token_counts=[16, 0, 6, 16], max_new_tokens=16)
    assert report["label"] == INDICATORS_LABEL and "not quality scores" in report["label"]
    assert report["n"] == 4
    assert set(report["means"]) == set(PER_RESPONSE) | {"length_tokens"}
    for name, per_response in PER_RESPONSE.items():
        values = [per_response(r) for r in responses]
        defined = [v for v in values if not math.isnan(v)]
        assert report["n_defined"][name] == len(defined)
        assert report["means"][name] == pytest.approx(sum(defined) / len(defined))
    assert report["n_defined"]["flesch_reading_ease"] == 3  # the empty response has no words
    assert report["means"]["degenerate"] == share_degenerate(responses) == 3 / 4
    assert report["means"]["length_tokens"] == pytest.approx(38 / 4)
    assert report["corpus"]["share_hitting_cap"] == 0.5
    assert report["corpus"]["distinct_2"] == corpus_distinct_n(responses, 2)


def test_text_indicators_takes_token_lengths_from_a_tokenizer():
    report = text_indicators(["a b c", "d e"], tokenize=str.split, max_new_tokens=3)
    assert report["means"]["length_tokens"] == 2.5
    assert report["corpus"]["share_hitting_cap"] == 0.5
    assert "length_tokens" not in text_indicators(["a b c"])["means"]


def test_text_indicators_rejects_mismatched_or_missing_token_counts():
    with pytest.raises(EvalError, match="one count per response"):
        text_indicators(["a", "b"], token_counts=[1])
    with pytest.raises(EvalError, match="max_new_tokens"):
        text_indicators(["a"], max_new_tokens=8)


def test_indicators_run_with_sockets_closed_and_without_nltk():
    # A fresh interpreter, so no cached analyzer or dictionary hides a first-use download.
    script = (
        "import socket, sys\n"
        "def refuse(*a, **k): raise OSError('network used')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "from evals.scoring.indicators import text_indicators\n"
        "r = text_indicators(['I love it, you are great!', 'Terrible. Awful day.'])\n"
        "assert r['means']['vader_compound'] is not None\n"
        "assert r['n_defined']['flesch_reading_ease'] == 2\n"
        "assert 'nltk' not in sys.modules, 'nltk was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
