"""Loading the guides (DecodingMethodsModels/models/guides.py): a PersRM checkpoint that holds
value-head tensors inside its main weights (ignored, as PAD.py ignores them; PAD's own value-head
file: tests/test_value_head.py), and reward models, from tiny saved models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from DecodingMethodsModels.engines.reward_guided import check_same_tokenizer
from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.models.guides import load_guide_tokenizer, load_persrm, load_reward_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def add_value_head(checkpoint: Path, hidden: int) -> None:
    """Write trl's value-head tensors into a saved model's safetensors file."""
    from safetensors.torch import load_file, save_file

    weights_file = checkpoint / "model.safetensors"
    weights = load_file(weights_file)
    weights["v_head.summary.weight"] = torch.randn(1, hidden)
    weights["v_head.summary.bias"] = torch.randn(1)
    save_file(weights, weights_file, metadata={"format": "pt"})


def save_classifier(tokenizer_dir: Path, out_dir: Path, num_labels: int) -> Path:
    from conftest import tiny_config
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = tiny_config("llama", len(tokenizer))
    config.num_labels = num_labels
    torch.manual_seed(5)
    LlamaForSequenceClassification(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def test_v_head_tensors_inside_the_main_weights_are_ignored_with_a_warning(
        tmp_path, smol_tokenizer_dir):
    from conftest import build_tiny_model
    from transformers import AutoModelForCausalLM

    checkpoint = build_tiny_model("llama", smol_tokenizer_dir, tmp_path / "persrm", seed=3)
    plain = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    add_value_head(checkpoint, plain.config.hidden_size)
    from safetensors import safe_open

    with safe_open(checkpoint / "model.safetensors", "pt") as stored:
        assert "v_head.summary.weight" in stored.keys()
    with pytest.warns(UserWarning, match=r"holds v_head.summary.bias, v_head.summary.weight in "
                      r"its main weights but no value_head.safetensors or value_head.bin: they "
                      r"are ignored, as PAD.py ignores them"):
        persrm = load_persrm(str(checkpoint), "cpu", "float32")
    assert not any("v_head" in name for name, _ in persrm.named_parameters())
    ids = torch.tensor([[1, 17, 300, 4000, 9]])
    with torch.inference_mode():
        assert torch.equal(persrm(input_ids=ids).logits, plain(input_ids=ids).logits)
    check_same_tokenizer(load_guide_tokenizer(str(smol_tokenizer_dir)),
                         load_guide_tokenizer(str(checkpoint)), "PersRM")


def test_a_checkpoint_without_an_lm_head_is_refused_as_persrm(tmp_path, smol_tokenizer_dir):
    checkpoint = save_classifier(smol_tokenizer_dir, tmp_path / "classifier", num_labels=1)
    with pytest.raises(UserError, match=r"no LM head in its checkpoint \(lm_head.weight") as err:
        load_persrm(str(checkpoint), "cpu", "float32")
    assert "\n" not in str(err.value)


def test_a_one_label_classifier_loads_as_reward_model(tmp_path, smol_tokenizer_dir):
    from transformers import LlamaForSequenceClassification

    checkpoint = save_classifier(smol_tokenizer_dir, tmp_path / "rm", num_labels=1)
    model = load_reward_model(str(checkpoint), "cpu", "float32")
    saved = LlamaForSequenceClassification.from_pretrained(checkpoint)
    assert torch.equal(model.score.weight, saved.score.weight)
    assert not model.training


def test_a_reward_model_with_two_labels_is_refused(tmp_path, smol_tokenizer_dir):
    checkpoint = save_classifier(smol_tokenizer_dir, tmp_path / "rm2", num_labels=2)
    with pytest.raises(UserError, match="2 labels"):
        load_reward_model(str(checkpoint), "cpu", "float32")


def test_a_causal_lm_without_a_reward_head_is_refused_as_reward_model(tmp_path,
                                                                     smol_tokenizer_dir):
    from conftest import build_tiny_model

    checkpoint = build_tiny_model("llama", smol_tokenizer_dir, tmp_path / "lm", seed=4)
    with pytest.raises(UserError, match="no reward head"):
        load_reward_model(str(checkpoint), "cpu", "float32")


def test_a_missing_guide_directory_is_a_user_error(tmp_path):
    for load in (load_persrm, load_reward_model):
        with pytest.raises(UserError, match="model directory not found"):
            load(str(tmp_path / "nowhere"), "cpu", "float32")
