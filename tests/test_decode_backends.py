"""The backend seam (pipeline/decode.py): one registry chooses the decoder of a run."""

from types import SimpleNamespace

import pytest

from DecodingMethodsModels.errors import UserError
from DecodingMethodsModels.pipeline.decode import BACKENDS, Decoder, VllmDecoder, decoder_class


def test_a_run_without_a_backend_decodes_with_transformers():
    assert decoder_class(SimpleNamespace()) is Decoder
    assert decoder_class(SimpleNamespace(backend="hf")) is Decoder
    assert set(BACKENDS) == {"hf", "vllm"}
    assert decoder_class(SimpleNamespace(backend="vllm")) is VllmDecoder


def test_an_unknown_backend_is_a_one_line_user_error():
    with pytest.raises(UserError) as caught:
        decoder_class(SimpleNamespace(backend="vllm-nope"))
    message = str(caught.value)
    assert message == "unknown backend 'vllm-nope'; use one of: hf, vllm"
    assert "\n" not in message


def test_a_registered_backend_is_chosen_by_its_name(monkeypatch):
    class Other(Decoder):
        pass

    monkeypatch.setitem(BACKENDS, "other", Other)
    assert decoder_class(SimpleNamespace(backend="other")) is Other
