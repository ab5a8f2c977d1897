"""Reward-model scoring with tiny random models saved to temporary directories (no network).

Models: a ``LlamaForSequenceClassification`` (read through its first logit), the native
ArmoRM architecture (``rewards`` [B, 19], gated ``score`` [B]) with random weights, and a
remote-code stand-in with ArmoRM's output shape. The tokenizer is a byte-level BPE with a
Llama-3-like chat template whose post-processor adds BOS, as Llama 3's does.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rm_helpers import (  # noqa: E402
    CORPUS,
    EOH,
    EOT,
    PREFERENCE,
    SOH,
    build_tokenizer,
    tiny_llama_config,
)

from evals.scoring import reward_model  # noqa: E402
from evals.scoring import rm_cli as rm_evals  # noqa: E402
from evals.scoring.armorm import ArmoRMForScoring  # noqa: E402

METHODS = ("base", "pref", "amulet")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from transformers import LlamaForSequenceClassification

    root = tmp_path_factory.mktemp("reward_models")
    torch.manual_seed(0)
    llama_dir = root / "tiny-llama-rm"
    tokenizer = build_tokenizer(llama_dir)
    LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=2)).save_pretrained(
        llama_dir
    )

    armo_dir = root / "tiny-armorm"
    build_tokenizer(armo_dir)
    header = f"{EOT}{SOH}assistant{EOH}"
    pattern = tokenizer.encode(header, add_special_tokens=False)
    armo = ArmoRMForScoring(tiny_llama_config(
        tokenizer, num_objectives=19, gating_hidden_dim=16, gating_n_hidden=2,
        gating_temperature=10, gating_token_pattern=pattern,
    ))
    with torch.no_grad():  # non-default values, to see that loading keeps them
        armo.reward_transform_matrix.copy_(torch.randn(19, 19))
        armo.gating.logit_scale.fill_(1.7)
        for layer in armo.gating.layers:  # Llama's init (std 0.02) leaves the gate ~uniform
            layer.weight.normal_(0.0, 1.0)
            layer.bias.normal_(0.0, 1.0)
    armo.save_pretrained(armo_dir)
    config = json.loads((armo_dir / "config.json").read_text())
    config["architectures"] = ["LlamaForRewardModelWithGating"]  # as on the hub
    (armo_dir / "config.json").write_text(json.dumps(config))
    return {"llama": llama_dir, "armorm": armo_dir, "armo_model": armo}


def write_run(root: Path, dataset: str, texts: dict[str, list[str]], pref: str = "creative"):
    run = root / pref / "Tiny-Gen" / dataset
    run.mkdir(parents=True, exist_ok=True)
    questions = [CORPUS[0], "How do I boil water?", "Name one pasta shape."]
    for method, responses in texts.items():
        records = [
            {"index": i, "question": questions[i], "preference": PREFERENCE, "response": r}
            for i, r in enumerate(responses)
        ]
        (run / f"{method}.json").write_text(json.dumps(records))
    return run


TEXTS = {
    "base": ["Boil water and cook.", "Heat it.", "Penne."],
    "pref": ["Imagine noodles that sing!", "Heat water in a pot until it bubbles well.",
             "Penne, bright as a summer morning."],
    "amulet": ["Imagine a kitchen where every noodle sings, creative and bright.",
               "Boil it.", "Fusilli, a creative spiral of joy and summer."],
}


def direct_records(model_dir: Path, texts=TEXTS) -> dict[tuple[str, int], dict]:
    """Reference scores: every conversation alone, unpadded, straight through the model."""
    rm = reward_model.load_reward_model(str(model_dir), device="cpu", dtype="float32")
    out = {}
    for method, responses in texts.items():
        for i, response in enumerate(responses):
            question = [CORPUS[0], "How do I boil water?", "Name one pasta shape."][i]
            ids = reward_model.conversation_ids(rm.tokenizer, question, PREFERENCE, response)
            model = rm.ensure_model()
            with torch.inference_mode():
                output = model(input_ids=torch.tensor([ids]))
            out[(method, i)] = reward_model.read_outputs(output)[0]
    return out


def rm_args(tmp_path: Path, model_dir: Path, *extra: str) -> list[str]:
    return [
        "--output_dir", str(tmp_path / "responses"), "--results_dir", str(tmp_path / "results"),
        "--methods", ",".join(METHODS), "--rm_name", str(model_dir), "--device", "cpu",
        "--batch_size", "4", "--no_progress", *extra,
    ]


def read_avg(path: Path) -> dict[str, float]:
    with open(path, newline="") as handle:
        return {row["method"]: float(row["mean"]) for row in csv.DictReader(handle)}


def test_conversation_has_one_bos_and_the_assistant_turn(tiny_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    ids = reward_model.conversation_ids(tokenizer, "Q?", PREFERENCE, "An answer.")
    bos = tokenizer.bos_token_id
    assert ids[0] == bos and ids.count(bos) == 1
    text = tokenizer.decode(ids)
    assert f"{SOH}user{EOH}\n\nQ? {PREFERENCE}{EOT}" in text
    assert text.endswith(f"{SOH}assistant{EOH}\n\nAn answer.{EOT}")
    # The tokenizer would add a second BOS if special tokens were added again.
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Q?"}], tokenize=False
    )
    assert tokenizer(rendered)["input_ids"][:2] == [bos, bos]


@pytest.mark.parametrize("kind", ["llama", "armorm"])
def test_right_padded_batch_equals_unpadded_single_rows(tiny_models, kind):
    rm = reward_model.load_reward_model(str(tiny_models[kind]), device="cpu", dtype="float32")
    id_lists = [
        reward_model.conversation_ids(rm.tokenizer, CORPUS[0], PREFERENCE, r)
        for r in ("Short.", TEXTS["amulet"][0], "Boil water, add salt, cook the pasta.")
    ]
    assert len({len(ids) for ids in id_lists}) == 3  # the batch really is padded
    batched = reward_model.score_rows(rm, id_lists)
    for ids, got in zip(id_lists, batched, strict=True):
        alone = reward_model.score_rows(rm, [ids])[0]
        for field in alone:
            values = alone[field] if isinstance(alone[field], list) else [alone[field]]
            got_values = got[field] if isinstance(got[field], list) else [got[field]]
            assert got_values == pytest.approx(values, abs=1e-5), field
    input_ids, mask = reward_model.right_pad(id_lists, rm.pad_id)
    assert (input_ids[:, -1] == rm.pad_id).sum() == 2 and mask.sum(1).tolist() == [
        len(ids) for ids in id_lists
    ]


def test_reading_the_reward_at_a_pad_position_would_be_caught(tiny_models):
    """The comparison above can fail: an RM that reads the last column of a padded batch
    (here: ArmoRM told there is no pad id) gives different numbers for the padded rows."""
    rm = reward_model.load_reward_model(str(tiny_models["armorm"]), device="cpu", dtype="float32")
    id_lists = [
        reward_model.conversation_ids(rm.tokenizer, CORPUS[0], PREFERENCE, r)
        for r in ("Short.", TEXTS["amulet"][0])
    ]
    right = [row["rewards"] for row in reward_model.score_rows(rm, id_lists)]
    model = rm.ensure_model()
    model.config.pad_token_id = None
    try:
        wrong = [row["rewards"] for row in reward_model.score_rows(rm, id_lists)]
    finally:
        model.config.pad_token_id = rm.pad_id
    assert wrong[0] != pytest.approx(right[0], abs=1e-3)  # padded row: misread
    assert wrong[1] == pytest.approx(right[1], abs=1e-5)  # longest row: no pad, same


def test_armorm_output_shape_and_loaded_weights(tiny_models):
    rm = reward_model.load_reward_model(str(tiny_models["armorm"]), device="cpu", dtype="float32")
    assert rm.implementation == "armorm-native"
    model = rm.ensure_model()
    saved = tiny_models["armo_model"]
    assert torch.equal(model.reward_transform_matrix, saved.reward_transform_matrix)
    assert model.gating.logit_scale.item() == pytest.approx(1.7)
    ids = reward_model.conversation_ids(rm.tokenizer, "Q?", PREFERENCE, "A.")
    output = model(input_ids=torch.tensor([ids, ids]))
    assert output.rewards.shape == (2, 19) and output.score.shape == (2,)
    assert output.gating_output.shape == (2, 19)


def _two_turn_ids(tokenizer) -> list[int]:
    """A conversation with two assistant turns, so the gate's header pattern occurs twice."""
    turns = [("user", CORPUS[0]), ("assistant", "Boil it."), ("user", PREFERENCE),
             ("assistant", TEXTS["amulet"][0])]
    text = tokenizer.apply_chat_template(
        [{"role": role, "content": content} for role, content in turns], tokenize=False
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _gate_by_hand(model, prompt_state: torch.Tensor) -> torch.Tensor:
    """softmax(MLP(x) / T) * logit_scale with the fixture's T = 10 and logit_scale = 1.7."""
    x = prompt_state
    for layer in model.gating.layers[:-1]:
        x = torch.relu(x @ layer.weight.T + layer.bias)
    last = model.gating.layers[-1]
    return torch.softmax((x @ last.weight.T + last.bias) / 10, dim=-1) * 1.7


def test_armorm_gate_and_rewards_are_read_at_the_published_positions(tiny_models):
    """ArmoRM's outputs recomputed from the backbone's hidden states ``h`` (B, L, H).

    The positions come from the tokens alone: the rewards at the last real token of each
    row, ``r_b = len(row_b) - 1`` (the token before the first pad); the gate at the
    ``<|eot_id|>`` just before the row's last ``<|start_header_id|>``, i.e. where the last
    assistant header pattern starts. Then ``rewards = h[b, r_b] W^T``,
    ``gate = softmax(MLP(h[b, g_b]) / T) * logit_scale`` and
    ``score = sum_k gate_k (rewards R)_k``.
    """
    rm = reward_model.load_reward_model(str(tiny_models["armorm"]), device="cpu", dtype="float32")
    model = rm.ensure_model()
    soh, eot = rm.tokenizer.convert_tokens_to_ids([SOH, EOT])
    id_lists = [
        reward_model.conversation_ids(rm.tokenizer, CORPUS[0], PREFERENCE, "Short."),
        _two_turn_ids(rm.tokenizer),
        reward_model.conversation_ids(rm.tokenizer, "Q?", PREFERENCE, TEXTS["pref"][1]),
    ]
    assert len({len(ids) for ids in id_lists}) == 3  # a right-padded batch
    assert id_lists[1].count(soh) == 4  # two user and two assistant headers
    input_ids, mask = reward_model.right_pad(id_lists, rm.pad_id)
    with torch.no_grad():
        output = model(input_ids=input_ids, attention_mask=mask)
        hidden = model.model(input_ids, attention_mask=mask).last_hidden_state
        rows = torch.arange(len(id_lists))
        reward_at = [len(ids) - 1 for ids in id_lists]
        gate_at = [max(k for k, t in enumerate(ids) if t == soh) - 1 for ids in id_lists]
        assert all(ids[g] == eot for ids, g in zip(id_lists, gate_at, strict=True))
        rewards = hidden[rows, reward_at] @ model.regression_layer.weight.T
        gate = _gate_by_hand(model, hidden[rows, gate_at])
        score = (gate * (rewards @ model.reward_transform_matrix)).sum(dim=1)
        torch.testing.assert_close(output.rewards, rewards, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(output.gating_output, gate, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(output.score, score, atol=1e-5, rtol=1e-5)
        # Each neighbouring or earlier position gives other numbers, so none would pass.
        first_gate = id_lists[1].index(soh, 2) - 1  # the first assistant header
        assert id_lists[1][first_gate] == eot and first_gate < gate_at[1]
        for wrong in (gate_at[1] - 1, gate_at[1] + 1, first_gate):
            assert not torch.allclose(_gate_by_hand(model, hidden[1, wrong]), gate[1], atol=1e-5)
        for wrong in (reward_at[0] - 1, reward_at[0] + 1):
            other = hidden[0, wrong] @ model.regression_layer.weight.T
            assert not torch.allclose(other, rewards[0], atol=1e-4)


@pytest.mark.parametrize(
    ("kind", "dimension", "pick"),
    [
        ("armorm", None, lambda r: r["rewards"][6]),
        ("armorm", "10", lambda r: r["rewards"][10]),
        ("armorm", "score", lambda r: r["score"]),
        ("llama", None, lambda r: r["logits"][0]),
    ],
    ids=["armorm-default-head-6", "armorm-head-10", "armorm-gated-score", "llama-first-logit"],
)
def test_cli_reports_the_requested_head_averaged_per_method(tmp_path, tiny_models, kind,
                                                            dimension, pick, capsys):
    write_run(tmp_path / "responses", "toy", TEXTS)
    extra = ["--pref_name", "creative", "--model_name", "Tiny-Gen", "--eval_data", "toy"]
    if dimension is not None:
        extra += ["--rm_dimension", dimension]
    assert rm_evals.main(rm_args(tmp_path, tiny_models[kind], *extra)) == 0
    label = {None: "dim6" if kind == "armorm" else "logit0", "10": "dim10",
             "score": "score"}[dimension]
    run_dir = tmp_path / "results" / "rm_score" / "creative" / "Tiny-Gen" / "toy"
    slug = tiny_models[kind].name
    got = read_avg(run_dir / f"{slug}_{label}_avg.csv")
    reference = direct_records(tiny_models[kind])
    for method in METHODS:
        want = sum(pick(reference[(method, i)]) for i in range(3)) / 3
        assert got[method] == pytest.approx(want, abs=1e-5)
    lines = (run_dir / f"{slug}.scores.jsonl").read_text().splitlines()
    assert len(lines) == 9
    record = json.loads(lines[0])
    assert len(record["rewards" if kind == "armorm" else "logits"]) == (19 if kind == "armorm"
                                                                        else 2)
    assert f"[{label}]" in capsys.readouterr().out


def test_rerun_repeats_nothing_and_a_torn_tail_is_redone(tmp_path, tiny_models, monkeypatch):
    write_run(tmp_path / "responses", "toy", TEXTS)
    args = rm_args(tmp_path, tiny_models["llama"], "--pref_name", "creative",
                   "--model_name", "Tiny-Gen", "--eval_data", "toy")
    assert rm_evals.main(args) == 0
    scores = (tmp_path / "results/rm_score/creative/Tiny-Gen/toy/tiny-llama-rm.scores.jsonl")
    first = scores.read_text()

    def no_weights(*_args, **_kwargs):
        raise AssertionError("a fully cached rerun must not load the model")

    monkeypatch.setattr(reward_model, "_load_weights", no_weights)
    assert rm_evals.main(args) == 0
    assert scores.read_text() == first
    monkeypatch.undo()
    # Keep 5 complete lines and half of the 6th, as a kill mid-write would.
    lines = first.splitlines(keepends=True)
    scores.write_text("".join(lines[:5]) + lines[5][:30])
    scored_rows = []
    real = reward_model.score_rows

    def counting(rm, id_lists):
        scored_rows.extend(id_lists)
        return real(rm, id_lists)

    monkeypatch.setattr(reward_model, "score_rows", counting)
    assert rm_evals.main(args) == 0
    assert len(scored_rows) == 4  # only the four missing conversations
    resumed = [json.loads(line) for line in scores.read_text().splitlines()]
    original = [json.loads(line) for line in first.splitlines()]
    assert len(resumed) == 9
    by_key = {r["key"]: r["logits"] for r in resumed}
    for record in original:
        assert by_key[record["key"]] == pytest.approx(record["logits"], abs=1e-5)


def test_too_long_conversation_is_skipped_for_every_method_or_fails_strictly(
    tmp_path, tiny_models, capsys
):
    texts = {m: list(v) for m, v in TEXTS.items()}
    texts["pref"][1] = " ".join(["creative"] * 300)
    write_run(tmp_path / "responses", "toy", texts)
    base = rm_args(tmp_path, tiny_models["llama"], "--pref_name", "creative", "--model_name",
                   "Tiny-Gen", "--eval_data", "toy", "--max_length", "120")
    assert rm_evals.main(base + ["--strict_length"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exceed the reward model's 120 tokens" in err[0]
    assert rm_evals.main(base) == 0
    assert "left out of every method's average" in capsys.readouterr().err
    run_dir = tmp_path / "results" / "rm_score" / "creative" / "Tiny-Gen" / "toy"
    with open(run_dir / "tiny-llama-rm_logit0_avg.csv", newline="") as handle:
        rows = {r["method"]: r for r in csv.DictReader(handle)}
    assert {r["n"] for r in rows.values()} == {"2"}
    reference = direct_records(tiny_models["llama"], TEXTS)
    want = (reference[("amulet", 0)]["logits"][0] + reference[("amulet", 2)]["logits"][0]) / 2
    assert float(rows["amulet"]["mean"]) == pytest.approx(want, abs=1e-5)


def test_grid_reports_the_share_of_settings_each_method_wins(tmp_path, tiny_models):
    write_run(tmp_path / "responses", "toy", TEXTS)
    swapped = {"base": TEXTS["amulet"], "pref": TEXTS["pref"], "amulet": TEXTS["base"]}
    write_run(tmp_path / "responses", "toy2", swapped)
    write_run(tmp_path / "responses", "partial", {"base": TEXTS["base"]})  # incomplete
    assert rm_evals.main(rm_args(tmp_path, tiny_models["llama"])) == 0
    summary = tmp_path / "results" / "rm_score" / "tiny-llama-rm_logit0_summary.csv"
    with open(summary, newline="") as handle:
        settings = list(csv.DictReader(handle))
    assert sorted(s["dataset"] for s in settings) == ["toy", "toy2"]
    wins = {m: 0.0 for m in METHODS}
    for setting in settings:
        means = {m: float(setting[m]) for m in METHODS}
        best = max(means, key=means.get)
        assert setting["best"] == best
        wins[best] += 1
    text = summary.with_suffix(".md").read_text()
    assert "Share of the 2 settings" in text
    for method in METHODS:
        assert f"| {method} | {wins[method]:.3f} | {wins[method] / 2:.3f} |" in text


def test_remote_code_needs_the_flag_and_loads_with_it(tmp_path, monkeypatch, capsys):
    import transformers.dynamic_module_utils as dynamic
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    # Remote code is copied into a modules cache: keep it inside tmp_path.
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    standin = tmp_path / "standin-rm"
    build_tokenizer(standin)
    (standin / "modeling_standin.py").write_text(STANDIN_CODE)
    tokenizer = AutoTokenizer.from_pretrained(standin)
    config = tiny_llama_config(tokenizer).to_dict()
    config["architectures"] = ["StandInRewardModel"]
    config["auto_map"] = {
        "AutoModelForSequenceClassification": "modeling_standin.StandInRewardModel"
    }
    (standin / "config.json").write_text(json.dumps(config))
    save_file({"anchor": torch.zeros(1)}, str(standin / "model.safetensors"))
    write_run(tmp_path / "responses", "toy", TEXTS)
    args = rm_args(tmp_path, standin, "--pref_name", "creative", "--model_name", "Tiny-Gen",
                   "--eval_data", "toy", "--rm_dimension", "3")
    assert rm_evals.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ships its own modeling code" in err[0]
    assert "--trust_remote_code" in err[0]
    assert not (tmp_path / "hf_modules").exists()  # nothing was imported without the flag
    assert rm_evals.main(args + ["--trust_remote_code"]) == 0
    got = read_avg(tmp_path / "results/rm_score/creative/Tiny-Gen/toy/standin-rm_dim3_avg.csv")
    # The stand-in's head k is k + (number of real tokens) / 100, read before the first pad.
    tok = AutoTokenizer.from_pretrained(standin)
    questions = [CORPUS[0], "How do I boil water?", "Name one pasta shape."]
    for method in METHODS:
        lengths = [len(reward_model.conversation_ids(tok, questions[i], PREFERENCE, r))
                   for i, r in enumerate(TEXTS[method])]
        assert got[method] == pytest.approx(3 + sum(lengths) / 300, abs=1e-5)


STANDIN_CODE = '''
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, PreTrainedModel
from transformers.utils import ModelOutput


@dataclass
class StandInOutput(ModelOutput):
    rewards: torch.FloatTensor = None
    score: torch.FloatTensor = None
    logits: torch.FloatTensor = None


class StandInRewardModel(PreTrainedModel):
    """ArmoRM's output shape; head k = k + (tokens before the first pad) / 100."""

    config_class = LlamaConfig

    def __init__(self, config):
        super().__init__(config)
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.post_init()

    def _init_weights(self, module):
        pass

    def forward(self, input_ids, attention_mask=None, **kwargs):
        length = input_ids.shape[1]
        first_pad = input_ids.eq(self.config.pad_token_id).int().argmax(-1)
        real = torch.where(first_pad == 0, torch.full_like(first_pad, length), first_pad)
        heads = torch.arange(19, dtype=torch.float32)
        rewards = heads[None, :] + real[:, None].float() / 100 + self.anchor
        score = rewards.mean(-1)
        return StandInOutput(rewards=rewards, score=score, logits=score)
'''


@pytest.mark.parametrize("module_name", [
    "evals.scoring.reward_model", "evals.scoring.armorm", "evals.scoring.rm_report",
    "evals.scoring.rm_run",
])
def test_doctests_of_reward_modules_pass(module_name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module_name))
    assert result.failed == 0 and result.attempted > 0


def test_native_armorm_parameter_names_match_the_published_checkpoint(tiny_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    model = ArmoRMForScoring(tiny_llama_config(tokenizer, gating_hidden_dim=8, gating_n_hidden=3))
    heads = {k: tuple(v.shape) for k, v in model.state_dict().items()
             if not k.startswith("model.")}
    expected = {"regression_layer.weight": (19, 32), "reward_transform_matrix": (19, 19),
                "gating.logit_scale": (1,), "gating.layers.3.weight": (19, 8)}
    for name, shape in expected.items():
        assert heads[name] == shape
    assert set(heads) == set(expected) | {
        f"gating.layers.{k}.{p}" for k in range(4) for p in ("weight", "bias")
    }


@pytest.mark.parametrize(
    ("extra", "message", "code"),
    [
        (["--eval_data", "nope"], "--eval_data 'nope'", 2),
        (["--eval_data", "toy", "--methods", "base,la"], "missing la.json", 2),
        (["--eval_data", "toy", "--rm_name", "/nonexistent/rm"], "cannot load reward model", 2),
        (["--eval_data", "toy", "--rm_dimension", "score"], "needs an ArmoRM-like model", 2),
        (["--methods", "base,best"], "best clash with a summary column", 2),
    ],
    ids=["missing-dataset", "missing-method", "missing-rm", "score-on-plain-rm",
         "method-named-like-a-column"],
)
def test_bad_input_is_one_line_and_nonzero_exit(tmp_path, tiny_models, capsys, extra, message,
                                               code):
    """Usage and input errors exit 2 (failures while scoring exit 1)."""
    write_run(tmp_path / "responses", "toy", TEXTS)
    args = rm_args(tmp_path, tiny_models["llama"], "--pref_name", "creative",
                   "--model_name", "Tiny-Gen", *extra)
    assert rm_evals.main(args) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_summary_keeps_the_preference_name_apart_from_the_pref_method(tmp_path, tiny_models):
    write_run(tmp_path / "responses", "toy", TEXTS, pref="creative")
    swapped = {"base": TEXTS["pref"], "pref": TEXTS["amulet"], "amulet": TEXTS["base"]}
    write_run(tmp_path / "responses", "toy", swapped, pref="verbose")
    assert rm_evals.main(rm_args(tmp_path, tiny_models["llama"])) == 0
    summary = tmp_path / "results" / "rm_score" / "tiny-llama-rm_logit0_summary.csv"
    header = summary.read_text().splitlines()[0].split(",")
    assert len(header) == len(set(header)), header
    with open(summary, newline="") as handle:
        settings = {row["preference"]: row for row in csv.DictReader(handle)}
    assert set(settings) == {"creative", "verbose"}
    for preference, row in settings.items():
        per_run = read_avg(tmp_path / "results" / "rm_score" / preference / "Tiny-Gen" / "toy"
                           / "tiny-llama-rm_logit0_avg.csv")
        for method in METHODS:
            assert float(row[method]) == pytest.approx(per_run[method], abs=1e-9)
    assert "| preference | model | dataset |" in summary.with_suffix(".md").read_text()
