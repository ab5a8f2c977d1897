"""PAD's rule on the paper's checkpoints (stand-ins with their real tokenizers, tests/standins.py):
Llama-3.1 with PAD's Llama-3 PersRM takes the first rule (same ids), as PAD.py does; Qwen2 and
Mistral take the second (re-encoded text). The rule is printed and recorded; `--pad_rule`
forces either or reproduces PAD.py's test on the model's path. The library refuses to read a
guide at ids that mean other tokens (decode_pad, decode_args, PadProcessor, ArgsProcessor), and
warns about a value head left out on every path."""

from __future__ import annotations

import json
import types
import warnings

import pytest
import torch
from cli_helpers import main_in_process, tree_state, write_dataset

from DecodingMethodsModels.engines.reward_guided import GuidedSettings, decode_args, decode_pad
from DecodingMethodsModels.engines.token_ids import id_differences
from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.library.guided_processors import ArgsProcessor, PadProcessor
from DecodingMethodsModels.pipeline.guided_runs import check_guide_tokenizer, pad_rule
from DecodingMethodsModels.prompts.amulet import encode_prompt, template_accepts_system

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PERSRM = "pad-persrm"
EXPECTED_RULE = {"llama-3.1-8b-instruct": "same_ids", "qwen2-7b-instruct": "retokenized",
                 "mistral-7b-instruct-v0.2": "retokenized"}
QUESTIONS = ["What is a good way to learn to cook pasta?", "Why is the sky blue?"]


@pytest.fixture(scope="module")
def tokenizers(standin_dirs) -> dict:
    from transformers import AutoTokenizer

    return {name: AutoTokenizer.from_pretrained(path) for name, path in standin_dirs.items()}


def prompts_of(tokenizer) -> list[list[int]]:
    system_role = template_accepts_system(tokenizer)
    return [encode_prompt(tokenizer, q, "creative", system_role) for q in QUESTIONS]


@pytest.mark.parametrize("decoder", list(EXPECTED_RULE))
def test_pad_rule_follows_whether_the_tokenizers_give_the_same_ids(tokenizers, decoder):
    """auto: the first rule exactly for Llama-3.1 with the Llama-3 PersRM (whose tokenizer names
    128004, 128008, 128010 differently but gives the same ids to every text and prompt)."""
    prompts = prompts_of(tokenizers[decoder])
    differences = id_differences(tokenizers[decoder], tokenizers[PERSRM], prompts)
    rule, why = pad_rule("auto", decoder, differences)
    assert rule == EXPECTED_RULE[decoder], why
    assert tokenizers[decoder].get_vocab() != tokenizers[PERSRM].get_vocab()  # names differ


def test_path_rule_reproduces_pad_py_and_forcing_checks_the_ids():
    assert pad_rule("path", "meta-llama/Llama-3.1-8B-Instruct", [])[0] == "same_ids"
    assert pad_rule("path", "princeton-nlp/Llama-3-Base-8B-SFT", [])[0] == "same_ids"
    assert pad_rule("path", "./my-llama-3.1-copy", [])[0] == "retokenized"  # PAD.py's test
    assert pad_rule("retokenized", "meta-llama/Llama-3.1-8B-Instruct", [])[0] == "retokenized"
    with pytest.raises(UserError, match="--pad_rule auto or retokenized") as err:
        pad_rule("path", "Qwen/Qwen2-7B-Instruct-Llama-3-like", ["'x' is 1 to ..., 2 to ..."])
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="first rule"):
        pad_rule("same_ids", "Qwen/Qwen2-7B-Instruct", ["'x' is 1 to ..., 2 to ..."])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("standin-data")
    write_dataset(out, "demo", QUESTIONS)
    return out


def pad_args(standin_dirs, decoder: str, data, out, *extra: str) -> list[str]:
    return ["--model_name", str(standin_dirs[decoder]), "--rm_name", str(standin_dirs[PERSRM]),
            "--method", "pad", "--data_dir", str(data), "--output_dir", str(out),
            "--eval_data", "demo", "--max_new_tokens", "3", "--device", "cpu", *extra]


@pytest.mark.parametrize("decoder", ["llama-3.1-8b-instruct", "qwen2-7b-instruct"])
def test_cli_prints_and_records_the_rule(standin_dirs, data, tmp_path, decoder):
    """Fails before: Llama-3.1 with the Llama-3 PersRM took the second rule, silently."""
    code, err = main_in_process(pad_args(standin_dirs, decoder, data, tmp_path))
    assert code == 0, err
    rule = EXPECTED_RULE[decoder]
    assert f"PAD: the {'first' if rule == 'same_ids' else 'second'} rule" in err
    [meta] = list(tmp_path.rglob("pad.meta.json"))
    guide = json.loads(meta.read_text())["environment"]["guide"]
    assert guide["pad_rule"] == rule and guide["pad_rule_chosen_by"] == "auto"
    assert guide.get("retokenized", False) == (rule == "retokenized")
    assert guide["value_head"]["file"] == "value_head.safetensors"


def test_cli_refuses_the_first_rule_on_other_ids_with_nothing_written(standin_dirs, data,
                                                                      tmp_path):
    before = tree_state(tmp_path)
    code, err = main_in_process(pad_args(standin_dirs, "mistral-7b-instruct-v0.2", data,
                                         tmp_path, "--pad_rule", "same_ids"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "first rule" in err and "retokenized" in err
    assert tree_state(tmp_path) == before


def test_guide_tokenizer_check_of_args_accepts_llama_3_1_with_a_llama_3_reward_model(
        standin_dirs, tokenizers):
    """ARGS reads its reward model at the decoder's ids: same ids, not the same names."""
    config = types.SimpleNamespace(rm_name=str(standin_dirs["armorm"]), trust_remote_code=False,
                                   guided_methods=["args"], pad_rule="auto", model_name="m")
    llama = tokenizers["llama-3.1-8b-instruct"]
    assert check_guide_tokenizer(config, llama, prompts_of(llama)) == (None, {})
    qwen = tokenizers["qwen2-7b-instruct"]
    with pytest.raises(UserError, match="reward model's tokenizer gives other ids"):
        check_guide_tokenizer(config, qwen, prompts_of(qwen))


# ----- the library ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(standin_dirs) -> dict:
    from transformers import AutoModelForCausalLM

    return {name: AutoModelForCausalLM.from_pretrained(standin_dirs[name], dtype=torch.float32)
            .eval() for name in (*EXPECTED_RULE, PERSRM)}


@pytest.fixture(scope="module")
def llama3_reward_model(standin_dirs):
    """A one-label reward model of the Llama-3 tokenizer (the PersRM's configuration)."""
    from transformers import AutoConfig, LlamaForSequenceClassification

    config = AutoConfig.from_pretrained(standin_dirs[PERSRM], num_labels=1)
    torch.manual_seed(0)
    return LlamaForSequenceClassification(config).eval()


def settings(tokenizer) -> GuidedSettings:
    return GuidedSettings(weight=0.8, max_new_tokens=2, eos_ids=[tokenizer.eos_token_id],
                          pad_id=tokenizer.eos_token_id, topk=3)


@pytest.mark.parametrize("decoder", ["qwen2-7b-instruct", "mistral-7b-instruct-v0.2"])
def test_library_refuses_a_persrm_of_other_ids_naming_the_second_rule(models, tokenizers,
                                                                      decoder):
    """Fails before: only a smaller PersRM vocabulary was refused, and Llama-3's 128256 rows
    cover Qwen2's and Mistral's ids."""
    prompts = prompts_of(tokenizers[decoder])
    persrm = models[PERSRM]
    for given in (None, (tokenizers[decoder], tokenizers[PERSRM])):
        with pytest.raises(UserError, match="PAD's second rule") as err:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the value head left out
                decode_pad(models[decoder], persrm, prompts, settings(tokenizers[decoder]),
                           tokenizers=given)
        assert "\n" not in str(err.value)
    ids = [torch.tensor([p]) for p in prompts][0]
    with pytest.raises(UserError, match="PAD's second rule"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        PadProcessor(persrm, ids, tokenizers=(tokenizers[decoder], tokenizers[PERSRM]))
    with pytest.raises(UserError, match="PAD's second rule"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        PadProcessor(persrm, ids, model=models[decoder])


def test_library_reads_the_llama_3_persrm_at_llama_3_1_ids(models, tokenizers):
    decoder = "llama-3.1-8b-instruct"
    prompts = prompts_of(tokenizers[decoder])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = decode_pad(models[decoder], models[PERSRM], prompts,
                            settings(tokenizers[decoder]),
                            tokenizers=(tokenizers[decoder], tokenizers[PERSRM]))
    assert all(len(ids) >= 1 for ids in result.token_ids)


def test_library_refuses_a_reward_model_of_other_ids(models, tokenizers, llama3_reward_model):
    decoder = "mistral-7b-instruct-v0.2"
    prompts = prompts_of(tokenizers[decoder])
    with pytest.raises(UserError, match="must share one tokenizer") as err:
        decode_args(models[decoder], llama3_reward_model, prompts, settings(tokenizers[decoder]))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="must share one"):
        ArgsProcessor(llama3_reward_model, [prompts[0]],
                      tokenizers=(tokenizers[decoder], tokenizers["armorm"]))
    with pytest.raises(UserError, match="must share one tokenizer"):
        ArgsProcessor(llama3_reward_model, [prompts[0]], model=models[decoder])


def test_value_head_warning_on_the_second_rule_too(models, tokenizers):
    """Fails before: the retokenized path returned before the warning."""
    from DecodingMethodsModels.engines.retokenized_pad import Retokenizer

    decoder = "qwen2-7b-instruct"
    retokenizer = Retokenizer(tokenizers[decoder], tokenizers[PERSRM])
    with pytest.warns(UserWarning, match="value head"):
        decode_pad(models[decoder], models[PERSRM], prompts_of(tokenizers[decoder]),
                   settings(tokenizers[decoder]), retokenizer=retokenizer)


def test_cli_args_with_a_llama_3_reward_model_on_llama_3_1(standin_dirs, data, tmp_path,
                                                           llama3_reward_model):
    """ARGS end to end: Llama-3.1 with a reward model of the Llama-3 tokenizer (3.0's names)
    decodes, as the same ids allow (fails before: the names differed, so it was refused)."""
    import shutil

    rm_dir = tmp_path / "llama3-reward-model"
    llama3_reward_model.save_pretrained(rm_dir)
    for item in standin_dirs[PERSRM].iterdir():
        if item.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(item, rm_dir / item.name)
    args = pad_args(standin_dirs, "llama-3.1-8b-instruct", data, tmp_path / "out")
    args[args.index("--rm_name") + 1] = str(rm_dir)
    args[args.index("--method") + 1] = "args"
    code, err = main_in_process(args)
    assert code == 0, err
    [final] = list((tmp_path / "out").rglob("args.json"))
    assert len(json.loads(final.read_text())) == len(QUESTIONS)
