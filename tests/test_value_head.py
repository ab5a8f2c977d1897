"""PAD's value head on the PersRM (DecodingMethodsModels/models/value_head.py): a tiny random Llama
PersRM saved with a random, non-identity `value_head.safetensors` decodes through
`lm_head(W h + b)` in the engine (batched and streamed), in PadProcessor and through the CLI,
against a cache-free reference that computes those logits by hand from output_hidden_states;
the identity head is the plain PersRM; the `.bin` form; the refused files; the warnings."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import sharpened

from DecodingMethodsModels import PadProcessor, attach_value_head
from DecodingMethodsModels.engines.core import collect, left_pad
from DecodingMethodsModels.engines.reference import reference_pad
from DecodingMethodsModels.engines.reward_guided import GuidedSettings, decode_pad, stream_pad
from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.models.guides import load_persrm
from DecodingMethodsModels.models.value_head import file_sha256
from DecodingMethodsModels.pipeline.methods import cut_at_eos
from DecodingMethodsModels.prompts.amulet import encode_prompt, preference_sentence

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTIONS = (
    "Why is the sky blue?",
    "Write a haiku about a long and winding road through the quiet hills after the rain.",
    "Hi",
    "How do I keep basil alive on a windowsill in winter?",
)
EOS = PAD = 2
STEPS = 12
WEIGHT = 1.5
HIDDEN = 32  # conftest.tiny_config


def random_head(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(HIDDEN, HIDDEN, generator=generator) / HIDDEN**0.5
    return weight, torch.randn(HIDDEN, generator=generator)


def save_head(directory: Path, weight, bias, form: str = "safetensors", **extra) -> Path:
    tensors = {"v_head.summary.weight": weight, "v_head.summary.bias": bias, **extra}
    tensors = {k: v for k, v in tensors.items() if v is not None}
    path = directory / f"value_head.{form}"
    if form == "safetensors":
        from safetensors.torch import save_file

        save_file(tensors, path, metadata={"format": "pt"})
    else:
        torch.save(tensors, path)
    return path


def persrm_copy(source: Path, out: Path) -> Path:
    """`source`'s weights and tokenizer in a fresh directory, without any value-head file."""
    import shutil

    shutil.copytree(source, out)
    return out


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory, smol_tokenizer_dir) -> Path:
    """A tiny random Llama PersRM with the SmolLM2 tokenizer, sharpened, no value head."""
    from conftest import build_tiny_model
    from transformers import AutoModelForCausalLM

    out = build_tiny_model("llama", smol_tokenizer_dir, tmp_path_factory.mktemp("p") / "persrm",
                           seed=3)
    model = sharpened(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32), 10.0)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def head() -> tuple[torch.Tensor, torch.Tensor]:
    return random_head(7)


@pytest.fixture(scope="module")
def headed_dir(tmp_path_factory, plain_dir, head) -> Path:
    out = persrm_copy(plain_dir, tmp_path_factory.mktemp("h") / "persrm-with-head")
    save_head(out, *head)
    return out


@pytest.fixture(scope="module")
def decoder(tiny_model_dirs):
    from conftest import sharpened_models

    return sharpened_models(tiny_model_dirs, ["qwen2"])["qwen2"]


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    sentence = preference_sentence("creative")
    return [encode_prompt(tokenizer, q, sentence, True) for q in QUESTIONS]


def plain_model(directory: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


class ByHand:
    """The plain PersRM read without a cache, its logits `lm_head(W h + b)` computed here from
    `output_hidden_states` (h = the last hidden state), for reward_guided_reference."""

    def __init__(self, plain, weight, bias):
        self.plain, self.weight, self.bias = plain, weight, bias

    def get_input_embeddings(self):
        return self.plain.get_input_embeddings()

    def __call__(self, input_ids, use_cache=False):
        out = self.plain(input_ids=input_ids, use_cache=False, output_hidden_states=True)
        h = out.hidden_states[-1].float()  # (1, L, H)
        return SimpleNamespace(logits=self.plain.lm_head(h @ self.weight.T + self.bias))


def settings(**options) -> GuidedSettings:
    return GuidedSettings(**{"weight": WEIGHT, "max_new_tokens": STEPS, "eos_ids": (EOS,),
                             "pad_id": PAD, **options})


@pytest.fixture(scope="module")
def by_hand_tokens(decoder, plain_dir, head, prompts) -> list[list[int]]:
    return reference_pad(decoder, ByHand(plain_model(plain_dir), *head), prompts, settings())


def test_the_loaded_persrms_logits_are_lm_head_of_w_h_plus_b(plain_dir, headed_dir, head,
                                                              prompts):
    persrm = load_persrm(str(headed_dir), "cpu", "float32")
    plain = plain_model(plain_dir)
    ids = torch.tensor([prompts[0]])
    with torch.inference_mode():
        loaded = persrm(input_ids=ids).logits
        by_hand = ByHand(plain, *head)(ids).logits
        assert torch.allclose(loaded, by_hand, atol=1e-5)
        assert not torch.allclose(loaded, plain(input_ids=ids).logits, atol=1e-1)


def test_engine_batched_and_streamed_equal_the_by_hand_reference(
        decoder, plain_dir, headed_dir, prompts, by_hand_tokens):
    persrm = load_persrm(str(headed_dir), "cpu", "float32")
    assert decode_pad(decoder, persrm, prompts, settings()).token_ids == by_hand_tokens
    streamed = collect(stream_pad(decoder, persrm, prompts, settings(), batch_size=2),
                        len(prompts))
    assert streamed.token_ids == by_hand_tokens
    plain = decode_pad(decoder, plain_model(plain_dir), prompts, settings()).token_ids
    assert plain != by_hand_tokens  # the head changes the answers: the test can fail


@torch.inference_mode()
def test_pad_processor_equals_the_by_hand_reference(decoder, headed_dir, prompts,
                                                    by_hand_tokens):
    persrm = load_persrm(str(headed_dir), "cpu", "float32")
    ids, mask = left_pad(prompts, PAD)
    processor = PadProcessor(persrm, ids, mask, weight=WEIGHT, topk=10)
    out = decoder.generate(ids, attention_mask=mask, logits_processor=[processor],
                           max_new_tokens=STEPS, eos_token_id=[EOS], pad_token_id=PAD,
                           do_sample=False)
    tokens = [cut_at_eos(row, [EOS]) for row in out[:, ids.shape[1]:].tolist()]
    assert tokens == by_hand_tokens


def test_the_identity_head_is_the_plain_persrm(tmp_path, decoder, plain_dir, prompts):
    directory = persrm_copy(plain_dir, tmp_path / "identity")
    save_head(directory, torch.eye(HIDDEN), torch.zeros(HIDDEN))
    persrm = load_persrm(str(directory), "cpu", "float32")
    plain = plain_model(plain_dir)
    ids = torch.tensor([prompts[1]])
    with torch.inference_mode():
        assert torch.equal(persrm(input_ids=ids).logits, plain(input_ids=ids).logits)
    assert (decode_pad(decoder, persrm, prompts, settings()).token_ids
            == decode_pad(decoder, plain, prompts, settings()).token_ids)


def test_the_bin_form_loads_and_safetensors_comes_first(tmp_path, plain_dir, headed_dir, head,
                                                        prompts):
    directory = persrm_copy(plain_dir, tmp_path / "bin")
    path = save_head(directory, *head, form="bin")
    persrm = load_persrm(str(directory), "cpu", "float32")
    ids = torch.tensor([prompts[2]])
    with_safetensors = load_persrm(str(headed_dir), "cpu", "float32")
    with torch.inference_mode():
        assert torch.equal(persrm(input_ids=ids).logits, with_safetensors(input_ids=ids).logits)
    from DecodingMethodsModels.models.value_head import value_head_facts

    assert value_head_facts(persrm) == {"file": "value_head.bin", "sha256": file_sha256(path)}
    save_head(directory, torch.eye(HIDDEN), torch.zeros(HIDDEN))  # both: safetensors wins
    assert value_head_facts(load_persrm(str(directory), "cpu", "float32"))["file"] == (
        "value_head.safetensors")


@pytest.mark.parametrize(("weight", "bias", "message"), [
    (torch.randn(1, HIDDEN), torch.randn(1), r"\(1, 32\).*a scalar value head, e.g. trl's"),
    (torch.randn(HIDDEN, HIDDEN), None, "has no v_head.summary.bias"),
    (None, torch.randn(HIDDEN), "has no v_head.summary.weight"),
])
def test_a_value_head_of_another_shape_or_without_a_key_is_one_line(
        tmp_path, plain_dir, weight, bias, message):
    directory = persrm_copy(plain_dir, tmp_path / "bad")
    path = save_head(directory, weight, bias)
    with pytest.raises(UserError, match=message) as err:
        load_persrm(str(directory), "cpu", "float32")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_an_unreadable_value_head_is_one_line(tmp_path, plain_dir):
    directory = persrm_copy(plain_dir, tmp_path / "broken")
    (directory / "value_head.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot read the value head") as err:
        load_persrm(str(directory), "cpu", "float32")
    assert "\n" not in str(err.value)


def test_a_head_left_out_of_a_persrm_is_warned_about(headed_dir, decoder, prompts):
    plain = plain_model(headed_dir)  # loaded by transformers alone: the head is not applied
    ids, mask = left_pad(prompts, PAD)
    with pytest.warns(UserWarning, match="value head .*value_head.safetensors.* attach_value_head"):
        PadProcessor(plain, ids, mask)
    with pytest.warns(UserWarning, match="does not apply"):
        decode_pad(decoder, plain, prompts[:1], settings(max_new_tokens=1))
    assert attach_value_head(plain)["file"] == "value_head.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PadProcessor(plain, ids, mask)
    with pytest.raises(UserError, match="already has a value head"):
        attach_value_head(plain)


def test_the_sidecar_and_fingerprint_record_the_value_head(tmp_path, model, data, plain_dir,
                                                           headed_dir):
    from cli_helpers import gen_args, main_in_process, run_files

    for persrm, expected in [(headed_dir, file_sha256(headed_dir / "value_head.safetensors")),
                             (plain_dir, None)]:
        out = tmp_path / persrm.name
        code, err = main_in_process(gen_args(model, data, out, "--rm_name", str(persrm),
                                             "--limit", "2", method="pad", max_new_tokens=4))
        assert code == 0, err
        _, directory = run_files(out, model, "pad")
        meta = json.loads((directory / "pad.meta.json").read_text())
        facts = meta["environment"]["guide"]["value_head"]
        assert facts == (expected and {"file": "value_head.safetensors", "sha256": expected})
        assert meta["fingerprint"].get("rm_value_head_sha256") == expected


def test_a_hub_persrms_value_head_is_found_in_the_hub_cache(tmp_path, monkeypatch, head):
    """Offline (conftest sets HF_HUB_OFFLINE): a cached file is used, a file the cache knows to
    be absent is skipped, and an unknown one is skipped with a warning."""
    import huggingface_hub.constants

    from DecodingMethodsModels.models.value_head import find_value_head

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--someone--persrm"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / ".no_exist" / "abc123").mkdir(parents=True)
    (repo / ".no_exist" / "abc123" / "value_head.safetensors").touch()
    with pytest.warns(UserWarning, match="cannot tell whether 'someone/persrm' has a value head"):
        assert find_value_head("someone/persrm") is None
    path = save_head(repo / "snapshots" / "abc123", *head, form="bin")
    assert find_value_head("someone/persrm") == path
    (repo / ".no_exist" / "abc123" / "value_head.bin").touch()
    path.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_value_head("someone/persrm") is None
