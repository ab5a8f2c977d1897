"""ARGS/PAD run configs (DecodingMethodsModels/pipeline/guided_config.py) and PAD's preference
prompts (DecodingMethodsModels/prompts/pad.py): no model needed."""

from __future__ import annotations

import pytest

from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.pipeline.guided_config import (
    GuidedRunConfig,
    load_run_configs,
    parse_run_configs,
    run_suffix,
    run_suffixes,
)
from DecodingMethodsModels.prompts.pad import (
    PRINCIPLE_SETS,
    encode_pad_prompt,
    pad_messages,
    preference_prompt,
    principle_set_name,
    principles_text,
)

# The public codes' files, verbatim: ARGS's greedy_rm_1.5.jsonl, PAD's grid_search.config and
# PAD's steers_llama3SFT_harmless.config.
ARGS_CONFIG = '{"rm_weight": 1.5, "topk": 10, "mode": "greedy_large", "sample_temp": null}\n'
PAD_GRID = "".join(
    f'{{"rm_weight": {w}, "topk": 10, "mode": "greedy", "sample_temp": null}}\n'
    for w in ("0.0", "0.1", "0.2", "0.5", "0.6", "0.8", "1.0", "1.2", "1.5")
)
PAD_HARMLESS = '{"rm_weight": 1.5, "topk": 10, "mode": "greedy", "sample_temp": null}\n'


def test_the_public_config_files_load_unchanged(tmp_path):
    args_file = tmp_path / "greedy_rm_1.5.jsonl"
    args_file.write_text(ARGS_CONFIG)
    assert load_run_configs(args_file) == [GuidedRunConfig(1.5, 10, "greedy", None, 1)]
    grid = tmp_path / "grid_search.config"
    grid.write_text(PAD_GRID)
    runs = load_run_configs(grid)
    assert [r.rm_weight for r in runs] == [0.0, 0.1, 0.2, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5]
    assert {(r.topk, r.mode, r.sample_temp) for r in runs} == {(10, "greedy", None)}
    assert [r.line for r in runs] == list(range(1, 10))
    assert parse_run_configs(PAD_HARMLESS) == [GuidedRunConfig(1.5, 10, "greedy", None, 1)]


def test_topk_mode_takes_its_temperature_and_defaults_to_0_7():
    text = ('{"rm_weight": 1, "topk": 5, "mode": "topk", "sample_temp": 0.9}\n'
            '{"rm_weight": 1, "topk": 5, "mode": "topk", "sample_temp": null}\n'
            '{"rm_weight": 1, "topk": 5, "mode": "greedy", "sample_temp": 0.9}\n')
    assert [r.sample_temp for r in parse_run_configs(text)] == [0.9, 0.7, None]


def test_blank_lines_are_skipped_and_keep_the_line_numbers():
    runs = parse_run_configs("\n" + PAD_HARMLESS + "\n\n" + PAD_HARMLESS)
    assert [r.line for r in runs] == [2, 5]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"rm_weight": 1.5, "topk": 10, "mode": "greedy"}', "line 2: missing key 'sample_temp'"),
        ('{"contrastive": 0.0, "rm_weight": 0.0, "topk": 40, "mode": "greedy", '
         '"sample_temp": null}', "line 2: unknown key 'contrastive'"),
        ('{"rm_weight": 1.5, "topk": 10, "mode": "logit_mix", "sample_temp": null}',
         "line 2: unknown mode 'logit_mix'"),
        ('{"rm_weight": "1.5", "topk": 10, "mode": "greedy", "sample_temp": null}',
         "line 2: rm_weight must be a finite number"),
        ('{"rm_weight": NaN, "topk": 10, "mode": "greedy", "sample_temp": null}',
         "line 2: rm_weight must be a finite number"),
        ('{"rm_weight": 1.5, "topk": 0, "mode": "greedy", "sample_temp": null}',
         "line 2: topk must be a whole number of at least 1"),
        ('{"rm_weight": 1.5, "topk": 2.5, "mode": "greedy", "sample_temp": null}',
         "line 2: topk must be a whole number"),
        ('{"rm_weight": 1.5, "topk": 10, "mode": "topk", "sample_temp": -1}',
         "line 2: sample_temp must be null or a positive number"),
        ('{"rm_weight": 1.5, "topk": 10,', "line 2: not valid JSON"),
        ("[1.5, 10]", "line 2: expected a JSON object"),
    ],
)
def test_a_bad_line_is_a_one_line_error_naming_its_number(line, message):
    with pytest.raises(UserError) as err:
        parse_run_configs(PAD_HARMLESS + line + "\n", "my.config")
    assert str(err.value).startswith("my.config " + message)
    assert "\n" not in str(err.value)


def test_an_empty_or_missing_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no runs"):
        parse_run_configs("\n\n")
    with pytest.raises(UserError, match="cannot read run config"):
        load_run_configs(tmp_path / "absent.config")


def test_every_run_of_a_grid_gets_its_own_suffix():
    runs = parse_run_configs(PAD_GRID)
    suffixes = run_suffixes(runs)
    assert len(set(suffixes)) == len(runs)
    assert suffixes[0] == "w0.0_k10_greedy" and suffixes[-1] == "w1.5_k10_greedy"
    sampled = parse_run_configs('{"rm_weight": 0.8, "topk": 10, "mode": "topk", '
                                '"sample_temp": null}')
    assert run_suffix(sampled[0]) == "w0.8_k10_topk_t0.7"


def test_lines_with_the_same_settings_still_get_distinct_suffixes():
    # "greedy" and "greedy_large" are one mode: without care the two runs would share a file
    runs = parse_run_configs(PAD_HARMLESS + ARGS_CONFIG + PAD_HARMLESS)
    assert run_suffix(runs[0]) == run_suffix(runs[1]) == run_suffix(runs[2])
    assert run_suffixes(runs) == ["w1.5_k10_greedy", "w1.5_k10_greedy_line2",
                                  "w1.5_k10_greedy_line3"]


def test_settings_from_a_run_carry_its_values():
    from DecodingMethodsModels.engines.reward_guided import GuidedSettings

    run = parse_run_configs('{"rm_weight": 0.6, "topk": 7, "mode": "topk", "sample_temp": 0.9}')[0]
    settings = GuidedSettings.from_run(run, 64, [2, 5], 2, ignore_eos=True)
    assert (settings.weight, settings.topk, settings.mode, settings.sample_temp) == (
        0.6, 7, "topk", 0.9)
    assert (settings.max_new_tokens, settings.eos_ids, settings.ignore_eos) == (64, (2, 5), True)
    greedy = GuidedSettings.from_run(parse_run_configs(ARGS_CONFIG)[0], 8, [2], 2)
    assert (greedy.mode, greedy.weight) == ("greedy", 1.5)


# ----- PAD's prompts --------------------------------------------------------------------------

GUIDELINE = ("[Guidelines] Your task is to generate response by considering the following "
             "principle. [Principles] {} [Instruction] ")


def test_the_seven_principle_sets_and_their_texts():
    assert PRINCIPLE_SETS == {
        "harmless": "harmless",
        "helpfulness": "helpfulness",
        "humor": "humor",
        "harmlesshelpfulness": "harmless and helpfulness",
        "harmlesshumor": "harmless and humor",
        "helpfulnesshumor": "helpfulness and humor",
        "harmlesshelpfulnesshumor": "harmless and helpfulness and humor",
    }
    for name, text in PRINCIPLE_SETS.items():
        assert preference_prompt(name) == GUIDELINE.format(text)


def test_principles_in_any_order_name_one_set():
    assert principle_set_name(["humor", "helpfulness"]) == "helpfulnesshumor"
    assert principle_set_name(("helpfulness", "humor", "harmless")) == "harmlesshelpfulnesshumor"
    for bad in (["humour"], [], ["humor", "humor"]):
        with pytest.raises(UserError, match="principles must be distinct names"):
            principle_set_name(bad)


def test_an_unknown_set_name_suggests_the_closest():
    with pytest.raises(UserError, match=r"did you mean 'helpfulnesshumor'\?") as err:
        principles_text("helpfulnesshumour")
    assert "\n" not in str(err.value)


def test_the_preference_prompt_opens_the_user_turn_and_vanilla_has_none():
    question = "How do I boil an egg?"
    assert pad_messages(question, "humor") == [
        {"role": "user", "content": GUIDELINE.format("humor") + question}
    ]
    assert pad_messages(question, None) == [{"role": "user", "content": question}]
    assert preference_prompt(None) == ""


def test_encoded_pad_prompt_is_the_templated_user_turn_and_assistant_header(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    question = "How do I boil an egg?"
    ids = encode_pad_prompt(tokenizer, question, "harmlesshumor")
    text = tokenizer.decode(ids)
    assert GUIDELINE.format("harmless and humor") + question in text
    assert text.rstrip().endswith("<|im_start|>assistant")
    vanilla = encode_pad_prompt(tokenizer, question, None)
    assert "[Guidelines]" not in tokenizer.decode(vanilla)
    expected = tokenizer.apply_chat_template(pad_messages(question, None), tokenize=True,
                                             add_generation_prompt=True, return_dict=True)
    assert vanilla == list(expected["input_ids"])


def test_public_sample_temp_samples_every_topk_run_at_0_7(tmp_path):
    """ARGS's and PAD's collect_model_outs.py never pass a line's sample_temp on."""
    from config import RunConfig
    from DecodingMethodsModels.pipeline.guided_config import guided_runs

    grid = tmp_path / "grid.config"
    grid.write_text('{"rm_weight": 1, "topk": 5, "mode": "topk", "sample_temp": 1.5}\n'
                    '{"rm_weight": 1, "topk": 5, "mode": "greedy", "sample_temp": null}\n')
    ours = RunConfig(method="pad", rm_name="self", run_config=str(grid))
    public = RunConfig(method="pad", rm_name="self", run_config=str(grid),
                       public_sample_temp=True)
    assert [r.sample_temp for _, r in guided_runs(ours, "pad")] == [1.5, None]
    assert [(stem, r.sample_temp) for stem, r in guided_runs(public, "pad")] == [
        ("pad_w1.0_k5_topk_t0.7", 0.7), ("pad_w1.0_k5_greedy", None)]
    flags = RunConfig(method="pad", rm_name="self", mode="topk", sample_temp=1.2,
                      public_sample_temp=True)
    assert [r.sample_temp for _, r in guided_runs(flags, "pad")] == [0.7]
