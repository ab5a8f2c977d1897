"""`python main.py --method args|pad` end to end on tiny random models with the SmolLM2
tokenizer: the responses layout and sidecar, the same tokens as a direct call of the
reward-guided engine on the same prompt ids, w = 0 as pref's (or, implicit PAD, base's) file,
resume, --limit extension, a --config grid, and each refused input as one line with nothing
written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import (
    QUESTIONS,
    classifier_model,
    gen_args,
    main_in_process,
    run_files,
    shared_dir,
    tree_state,
)

from DecodingMethodsModels.pipeline.outputs import PartialStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 12
BATCH = 4
PAD_SET = "harmlesshumor"


@pytest.fixture(scope="module")
def persrm(tmp_path_factory, tiny_model_dirs) -> Path:
    """A PersRM: a tiny Qwen2 causal LM with the tiny models' tokenizer, sharp enough that its
    logits differ between candidates."""
    from cli_helpers import build_variant

    return build_variant(tiny_model_dirs["qwen2"], shared_dir(tmp_path_factory, "tiny-persrm"))


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, tiny_model_dirs) -> Path:
    """The tiny one-label reward model of cli_helpers with its weights scaled up, so that its
    rewards differ between candidates by more than their logits do."""
    from transformers import LlamaForSequenceClassification

    out = shared_dir(tmp_path_factory, "tiny-sharp-reward-model")
    if not (out / "model.safetensors").is_file():
        source = classifier_model(tmp_path_factory, tiny_model_dirs)
        model = LlamaForSequenceClassification.from_pretrained(source)
        with torch.no_grad():
            for weight in model.parameters():
                if weight.dim() == 2:
                    weight.mul_(10.0)
        model.save_pretrained(out)
        for item in source.iterdir():
            if item.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                shutil.copy(item, out / item.name)
    return out


@pytest.fixture(scope="module")
def psoups(tmp_path_factory) -> Path:
    """PAD's P-Soups prompts as a dataset directory, through data/fetch_pad_sets.py."""
    import sys

    from conftest import ROOT, benchmark_file

    sys.path.insert(0, str(ROOT / "data"))
    import fetch_pad_sets

    copy = benchmark_file("psoups_koala_eval_50.json")
    out = shared_dir(tmp_path_factory, "psoups-data")
    if not (out / "psoups.json").is_file():
        assert fetch_pad_sets.main(["--psoups_from", str(copy), "--dest", str(out)]) == 0
    return out


def run_ok(args: list[str]) -> str:
    code, err = main_in_process(args)
    assert code == 0, err
    return err


def records(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def cli_args(model, data, out, *extra, method="args", **kwargs) -> list[str]:
    kwargs.setdefault("max_new_tokens", STEPS)
    kwargs.setdefault("batch_size", BATCH)
    return gen_args(model, data, out, *extra, method=method, **kwargs)


@pytest.fixture(scope="module")
def args_reference(tmp_path_factory, model, data, reward_model) -> tuple[Path, list[str]]:
    """An uninterrupted ARGS run: (its output directory, the arguments that made it)."""
    out = tmp_path_factory.mktemp("args-reference")
    args = cli_args(model, data, out, "--rm_name", str(reward_model))
    run_ok(args)
    return out, args


def engine_inputs(model_dir: Path, questions: list[str], pref_name: str = "creative"):
    """The decoding model, its tokenizer, EOS ids, pad id, and the pref and base prompt ids the
    CLI builds for `questions` (PAD's prompts for a principle set)."""
    from transformers import AutoTokenizer

    from DecodingMethodsModels.models.loading import (
        eos_token_ids,
        load_model,
        pad_token_id,
        resolve_model,
    )
    from DecodingMethodsModels.prompts.amulet import encode_prompt, preference_sentence
    from DecodingMethodsModels.prompts.pad import PRINCIPLE_SETS, encode_pad_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_model(resolve_model(str(model_dir)), "cpu", "float32")
    if pref_name in PRINCIPLE_SETS:
        pref = [encode_pad_prompt(tokenizer, q, pref_name) for q in questions]
        base = [encode_pad_prompt(tokenizer, q, None) for q in questions]
    else:
        sentence = preference_sentence(pref_name)
        pref = [encode_prompt(tokenizer, q, sentence, True) for q in questions]
        base = [encode_prompt(tokenizer, q, "", True) for q in questions]
    eos = eos_token_ids(model, tokenizer)
    return model, tokenizer, eos, pad_token_id(tokenizer, eos), pref, base


def responses_of(tokenizer, token_ids, eos) -> list[str]:
    from DecodingMethodsModels.pipeline.decode import decode_response

    return [decode_response(tokenizer, ids, eos) for ids in token_ids]


def test_args_writes_the_layout_and_sidecar_with_the_tokens_of_a_direct_call(
    model, data, reward_model, args_reference
):
    from DecodingMethodsModels.engines.reward_guided import GuidedSettings, decode_args
    from DecodingMethodsModels.models.guides import load_reward_model

    out, _ = args_reference
    final, directory = run_files(out, model, "args")
    assert sorted(p.name for p in directory.iterdir()) == ["args.json", "args.meta.json"]
    written = records(final)
    assert [r["index"] for r in written] == list(range(len(QUESTIONS)))
    assert all(set(r) == {"index", "question", "preference", "response"} for r in written)
    assert written[0]["preference"] == "Your answer should be creative as much as possible."

    meta = json.loads((directory / "args.meta.json").read_text())
    fingerprint = meta["fingerprint"]
    assert fingerprint["method"] == "args" and fingerprint["rm_name"] == str(reward_model)
    assert (fingerprint["rm_weight"], fingerprint["topk"], fingerprint["mode"]) == (
        1.5, 10, "greedy")
    assert fingerprint["ignore_eos"] is False and fingerprint["rm_dtype"] == "float32"
    assert not {"sample_temp", "seed", "rm_device", "rm_batch_size"} & set(fingerprint)
    assert meta["environment"]["guide"]["rm_device"] == "cpu"
    assert meta["generated_tokens"] > 0 and meta["environment"]["git_commit"]

    decoder, tokenizer, eos, pad, pref, _ = engine_inputs(model, QUESTIONS)
    rm = load_reward_model(str(reward_model), "cpu", "float32")
    settings = GuidedSettings(weight=1.5, max_new_tokens=STEPS, eos_ids=eos, pad_id=pad)
    direct = decode_args(decoder, rm, pref, settings).token_ids
    assert [r["response"] for r in written] == responses_of(tokenizer, direct, eos)
    # the reward model changes the answers: w = 0 (greedy) gives other ones
    greedy = decode_args(decoder, rm, pref, GuidedSettings(
        weight=0.0, max_new_tokens=STEPS, eos_ids=eos, pad_id=pad)).token_ids
    assert greedy != direct


def test_pad_on_psoups_with_pads_principles_equals_a_direct_decode_pad(
    model, persrm, psoups, tmp_path
):
    from DecodingMethodsModels.engines.reward_guided import GuidedSettings, decode_pad
    from DecodingMethodsModels.models.guides import load_persrm
    from DecodingMethodsModels.pipeline.eval_data import load_dataset
    from DecodingMethodsModels.prompts.pad import preference_prompt

    limit = 6
    run_ok(cli_args(model, psoups, tmp_path, "--rm_name", str(persrm), "--pref_name", PAD_SET,
                    "--eval_data", "psoups", "--limit", str(limit), "--rm_batch_size", "3",
                    method="pad"))
    final, directory = run_files(tmp_path, model, "pad", pref=PAD_SET, dataset="psoups")
    written = records(final)
    assert len(written) == limit
    assert {r["preference"] for r in written} == {preference_prompt(PAD_SET)}
    fingerprint = json.loads((directory / "pad.meta.json").read_text())["fingerprint"]
    assert fingerprint["pad_principles"] == PAD_SET and fingerprint["rm_weight"] == 0.8

    questions = [q.question for q in load_dataset(psoups, "psoups", limit).questions]
    decoder, tokenizer, eos, pad, pref, _ = engine_inputs(model, questions, PAD_SET)
    guide = load_persrm(str(persrm), "cpu", "float32")
    settings = GuidedSettings(weight=0.8, max_new_tokens=STEPS, eos_ids=eos, pad_id=pad)
    direct = decode_pad(decoder, guide, pref, settings).token_ids
    assert [r["response"] for r in written] == responses_of(tokenizer, direct, eos)


def test_implicit_pad_sampling_equals_decode_pad_implicit_with_the_batch_seed(
    model, data, tmp_path
):
    from DecodingMethodsModels.engines.reward_guided import GuidedSettings, decode_pad_implicit
    from DecodingMethodsModels.pipeline.decode import seed_for_batch
    from DecodingMethodsModels.pipeline.plan import batches_of

    limit, seed = 5, 7
    run_ok(cli_args(model, data, tmp_path, "--rm_name", "self", "--rm_weight", "1.5",
                    "--mode", "topk", "--sample_temp", "0.9", "--seed", str(seed),
                    "--limit", str(limit), method="pad", batch_size=8))
    final, directory = run_files(tmp_path, model, "pad")
    fingerprint = json.loads((directory / "pad.meta.json").read_text())["fingerprint"]
    assert (fingerprint["mode"], fingerprint["sample_temp"], fingerprint["seed"]) == (
        "topk", 0.9, seed)
    assert "rm_dtype" not in fingerprint

    decoder, tokenizer, eos, pad, pref, base = engine_inputs(model, QUESTIONS[:limit])
    (order,) = batches_of(tuple(range(limit)), [len(p) for p in pref], 8)  # one batch
    settings = GuidedSettings(weight=1.5, max_new_tokens=STEPS, eos_ids=eos, pad_id=pad,
                              mode="topk", sample_temp=0.9)
    generator = torch.Generator().manual_seed(seed_for_batch(seed, 0))
    direct = decode_pad_implicit(decoder, [base[i] for i in order], [pref[i] for i in order],
                                 settings, generator).token_ids
    by_index = {r["index"]: r["response"] for r in records(final)}
    assert [by_index[i] for i in order] == responses_of(tokenizer, direct, eos)


def test_weight_zero_is_prefs_file_for_args_and_bases_for_implicit_pad(
    model, data, reward_model, tmp_path
):
    run_ok(cli_args(model, data, tmp_path, "--rm_name", str(reward_model), "--rm_weight", "0",
                    "--limit", "6", method="pref,args"))
    pref_file, _ = run_files(tmp_path, model, "pref")
    args_file, _ = run_files(tmp_path, model, "args")
    assert args_file.read_bytes() == pref_file.read_bytes()

    # PAD's vanilla baseline: w = 0 on PAD's prompt without principles is base on that prompt
    run_ok(cli_args(model, data, tmp_path, "--rm_name", "self", "--rm_weight", "0",
                    "--pref_name", "humor", "--limit", "6", method="base,pad"))
    base_file, _ = run_files(tmp_path, model, "base", pref="humor")
    pad_file, _ = run_files(tmp_path, model, "pad", pref="humor")
    assert pad_file.read_bytes() == base_file.read_bytes()

    # a finished file of other settings is refused before any model loads, nothing changes
    before = tree_state(tmp_path)
    code, err = main_in_process(cli_args(model, data, tmp_path, "--rm_name", str(reward_model),
                                         "--rm_weight", "0.5", "--limit", "6"))
    assert code == 2 and "rm_weight: 0.0 -> 0.5" in err and "--overwrite" in err
    assert tree_state(tmp_path) == before


def test_interrupted_args_resumes_to_the_uninterrupted_file(
    model, data, args_reference, tmp_path, monkeypatch
):
    reference_dir, args = args_reference
    args = [str(tmp_path) if a == str(reference_dir) else a for a in args]
    reference, _ = run_files(reference_dir, model, "args")
    final, directory = run_files(tmp_path, model, "args")
    real, calls = PartialStore.append, []

    def stop_after_one(self, batch, records, **stats):
        if calls:
            raise KeyboardInterrupt
        calls.append(batch)
        real(self, batch, records, **stats)

    monkeypatch.setattr(PartialStore, "append", stop_after_one)
    code, err = main_in_process(args)
    assert code == 130 and "to resume, rerun" in err
    assert not final.exists() and (directory / "args.part0.jsonl").is_file()
    monkeypatch.setattr(PartialStore, "append", real)

    err = run_ok(args)
    assert f"{len(QUESTIONS) - BATCH} of {len(QUESTIONS)} questions to decode" in err
    assert final.read_bytes() == reference.read_bytes()
    assert sorted(p.name for p in directory.iterdir()) == ["args.json", "args.meta.json"]


def test_a_larger_limit_extends_a_finished_args_file(model, data, args_reference, tmp_path):
    reference_dir, args = args_reference
    args = [str(tmp_path) if a == str(reference_dir) else a for a in args]
    reference, _ = run_files(reference_dir, model, "args")
    final, directory = run_files(tmp_path, model, "args")
    run_ok([*args, "--limit", "3"])
    err = run_ok([*args, "--limit", "7"])
    assert "4 of 7 questions to decode" in err
    assert records(final) == records(reference)[:7]
    assert json.loads((directory / "args.meta.json").read_text())["extended_from_records"] == 3


def test_a_config_grid_writes_one_file_per_line(model, data, tmp_path):
    grid = tmp_path / "grid.jsonl"
    grid.write_text(
        '{"rm_weight": 0.5, "topk": 10, "mode": "greedy", "sample_temp": null}\n'
        '{"rm_weight": 1.5, "topk": 5, "mode": "greedy", "sample_temp": null}\n'
        '{"rm_weight": 1.5, "topk": 5, "mode": "greedy_large", "sample_temp": null}\n'
        '{"rm_weight": 1.5, "topk": 5, "mode": "topk", "sample_temp": null}\n'
    )
    out = tmp_path / "out"
    run_ok(cli_args(model, data, out, "--rm_name", "self", "--config", str(grid), "--limit", "2",
                    method="pad"))
    _, directory = run_files(out, model, "pad")
    stems = ["pad_w0.5_k10_greedy", "pad_w1.5_k5_greedy", "pad_w1.5_k5_greedy_line3",
             "pad_w1.5_k5_topk_t0.7"]
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        f"{s}{ext}" for s in stems for ext in (".json", ".meta.json"))
    prints = [json.loads((directory / f"{s}.meta.json").read_text())["fingerprint"]
              for s in stems]
    assert [(f["rm_weight"], f["topk"], f["mode"]) for f in prints] == [
        (0.5, 10, "greedy"), (1.5, 5, "greedy"), (1.5, 5, "greedy"), (1.5, 5, "topk")]
    assert prints[3]["sample_temp"] == 0.7
    # greedy_large is the same argmax as greedy
    assert (directory / f"{stems[1]}.json").read_bytes() == (
        directory / f"{stems[2]}.json").read_bytes()


def test_a_bad_config_line_is_one_line_before_any_model_loads(data, tmp_path):
    grid = tmp_path / "grid.jsonl"
    grid.write_text('{"rm_weight": 0.5, "topk": 10, "mode": "greedy", "sample_temp": null}\n'
                    '{"rm_weight": 0.5, "topk": 10, "mode": "greedy", "temp": 0.7}\n')
    out = tmp_path / "out"
    # the model does not even exist: the config line is refused before anything looks for it
    code, err = main_in_process(gen_args(tmp_path / "no-model", data, out, "--rm_name", "self",
                                         "--config", str(grid), method="pad"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"{grid} line 2" in lines[0] and "missing key 'sample_temp'" in lines[0]
    assert "unknown key 'temp'" in lines[0]
    assert not out.exists()


def other_tokenizer_reward_model(tmp_path_factory) -> Path:
    """A one-label reward model saved with rm_helpers' own small tokenizer."""
    from rm_helpers import build_tokenizer, tiny_llama_config
    from transformers import LlamaForSequenceClassification

    out = shared_dir(tmp_path_factory, "rm-other-tokenizer")
    if not (out / "model.safetensors").is_file():
        tokenizer = build_tokenizer(out)
        LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=1)).save_pretrained(
            out)
    return out


REFUSED = [
    ("args_without_rm", ["--method", "args"], "--method args needs --rm_name"),
    ("args_with_self", ["--method", "args", "--rm_name", "self"], "is for --method pad"),
    ("pad_without_rm", ["--method", "pad"], "--method pad needs --rm_name"),
    ("nan_weight", ["--method", "pad", "--rm_name", "self", "--rm_weight", "nan"],
     "--rm_weight must be a finite number"),
    ("inf_weight", ["--method", "pad", "--rm_name", "self", "--rm_weight", "inf"],
     "--rm_weight must be a finite number"),
    ("zero_topk", ["--method", "pad", "--rm_name", "self", "--topk", "0"], "--topk must be >= 1"),
    ("topk_above_vocab", ["--method", "pad", "--rm_name", "self", "--topk", "1000000"],
     "larger than the decoding model's vocabulary"),
    ("args_and_pad", ["--method", "args,pad", "--rm_name", "self"], "run them as two commands"),
    ("do_sample", ["--method", "pad", "--rm_name", "self", "--do_sample"],
     "--do_sample does not apply to --method pad"),
    ("penalty", ["--method", "pad", "--rm_name", "self", "--repetition_penalty", "1.2"],
     "--repetition_penalty cannot be applied by --method pad"),
    ("ngram", ["--method", "args", "--rm_name", "RM", "--no_repeat_ngram_size", "3"],
     "--no_repeat_ngram_size cannot be applied by --method args"),
    ("config_without_guided", ["--method", "pref", "--config", "grid.jsonl"],
     "--config FILE (one reward-guided run per line) is for --method args or pad"),
    ("other_tokenizer", ["--method", "args", "--rm_name", "OTHER"],
     "the reward model's tokenizer gives other ids than the decoding model's"),
    ("persrm_without_lm_head", ["--method", "pad", "--rm_name", "CLASSIFIER"],
     "no LM head in its checkpoint"),
    ("causal_lm_as_reward_model", ["--method", "args", "--rm_name", "PERSRM"],
     "no reward head"),
]


@pytest.mark.parametrize(("name", "flags", "says"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_inputs_are_one_line_and_write_nothing(
    name, flags, says, model, data, persrm, tmp_path, tmp_path_factory, tiny_model_dirs
):
    guides = {"OTHER": lambda: other_tokenizer_reward_model(tmp_path_factory),
              "CLASSIFIER": lambda: classifier_model(tmp_path_factory, tiny_model_dirs),
              "PERSRM": lambda: persrm}
    flags = [str(guides[f]()) if f in guides else f for f in flags]
    out = tmp_path / "out"
    args = [*gen_args(model, data, out, max_new_tokens=4), *flags]  # the later --method wins
    code, err = main_in_process(args)
    # refusals that need a model's weights come after transformers' own loading output
    lines = err.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert code == 2, err
    assert errors == lines[-1:] and says in errors[0], err
    if name not in ("topk_above_vocab", "persrm_without_lm_head", "causal_lm_as_reward_model"):
        assert len(lines) == 1, err  # the cheap checks come before any model loads
    assert "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*"))


def test_help_says_all_means_the_five_methods_without_a_reward_model():
    from config import build_parser, config_from_args

    text = " ".join(build_parser().format_help().split())
    assert "'all' for the five that need no reward model" in text
    assert "--rm_name RM_NAME" in text and "--config FILE" in text
    assert config_from_args(["--method", "all"]).methods == ["base", "pref", "beam", "la",
                                                             "amulet"]


def test_two_ranks_share_the_batches_and_rank_0_writes_the_single_process_file(
    model, data, args_reference, tmp_path, monkeypatch
):
    """Data parallel without a launcher: the rendezvous is replaced by a direct call, rank 1
    decodes its batches (1, 3, ...) first, then rank 0 its own and assembles them all."""
    from DecodingMethodsModels.pipeline import runner

    reference_dir, args = args_reference
    args = [str(tmp_path) if a == str(reference_dir) else a for a in args]
    reference, _ = run_files(reference_dir, model, "args")
    final, directory = run_files(tmp_path, model, "args")
    monkeypatch.setattr(runner, "join", lambda process: None)
    monkeypatch.setattr(runner, "meet", lambda process, shared, prepare: prepare())
    monkeypatch.setattr(runner, "leave", lambda process: None)
    n_batches = len(QUESTIONS) // BATCH
    for rank in (1, 0):
        for key, value in (("WORLD_SIZE", 2), ("RANK", rank), ("LOCAL_RANK", rank),
                           ("LOCAL_WORLD_SIZE", 2)):
            monkeypatch.setenv(key, str(value))
        run_ok(args)
        if rank == 1:
            part = (directory / "args.part1.jsonl").read_text()
            batches = [json.loads(line)["batch"] for line in part.splitlines()[1:]]
            assert batches == list(range(1, n_batches, 2)) and not final.exists()
    assert final.read_bytes() == reference.read_bytes()
    meta = json.loads((directory / "args.meta.json").read_text())
    assert meta["environment"]["world_size"] == 2
    assert sorted(p.name for p in directory.iterdir()) == ["args.json", "args.meta.json"]


def test_flags_that_change_nothing_are_named_in_a_warning(tmp_path):
    import warnings

    from config import config_from_args

    cases = [
        (["--method", "pref", "--rm_name", "RM", "--topk", "5"],
         "rm_name, topk only affect --method args and pad"),
        (["--method", "pad", "--rm_name", "self", "--config", str(tmp_path / "grid.jsonl"),
          "--rm_weight", "2"], "rm_weight ignored: --config sets them per line"),
        (["--method", "pad", "--rm_name", "self", "--sample_temp", "0.9"],
         "sample_temp ignored with --mode greedy"),
        (["--method", "pad", "--rm_name", "self", "--rm_device", "cpu"],
         "rm_device ignored with --rm_name self"),
    ]
    (tmp_path / "grid.jsonl").write_text(
        '{"rm_weight": 1.0, "topk": 10, "mode": "greedy", "sample_temp": null}\n')
    for argv, says in cases:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            config_from_args(argv)
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1 and says in messages[0], messages


@pytest.mark.parametrize("method", ["args", "pad"])
def test_continuous_batching_writes_the_fixed_batches_file(model, data, reward_model, tmp_path,
                                                           method):
    """Greedy ARGS and implicit PAD admit a question as soon as a slot frees; with fewer slots
    than questions the file is byte for byte that of fixed batches."""
    guide = str(reward_model) if method == "args" else "self"
    files = []
    for name, extra in (("stream", []), ("fixed", ["--no_continuous_batching"])):
        out = tmp_path / name
        run_ok(cli_args(model, data, out, "--rm_name", guide, *extra, method=method,
                        batch_size=2))
        files.append(run_files(out, model, method)[0].read_bytes())
    assert len(QUESTIONS) > 2 and files[0] == files[1]
