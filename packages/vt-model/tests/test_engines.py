"""vt_model.engines' registry: backends by name, a clear error for an unknown one, and no silent
replacement of a registered engine."""

from __future__ import annotations

import pytest

from vt_model.engines import ENGINES, HFEngine, VLLMEngine, build_engine, register_engine


class ScriptedEngine:
    num_parameters = None

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def prepare(self, record, template, clip, *, prompt_text=None):
        return prompt_text

    def generate(self, prepared):
        return []


@pytest.fixture
def registry():
    """ENGINES as it was before the test, whatever the test registers."""
    saved = dict(ENGINES)
    yield ENGINES
    ENGINES.clear()
    ENGINES.update(saved)


def test_the_built_in_backends_are_registered_by_name():
    assert ENGINES["hf"] is HFEngine and ENGINES["vllm"] is VLLMEngine


def test_an_unknown_engine_name_is_refused_with_the_valid_names(registry):
    with pytest.raises(ValueError, match="unknown generation engine 'nope'") as info:
        build_engine("nope", "model")
    assert "hf" in str(info.value) and "vllm" in str(info.value)


def test_register_engine_refuses_a_taken_name_unless_asked_to_replace(registry):
    assert register_engine("registry_probe_test", ScriptedEngine) is ScriptedEngine
    register_engine("registry_probe_test", ScriptedEngine)  # the same class again is not a conflict

    class Other(ScriptedEngine):
        pass

    with pytest.raises(ValueError, match="already registered as 'registry_probe_test'"):
        register_engine("registry_probe_test", Other)
    with pytest.raises(ValueError, match="already registered as 'hf'"):
        register_engine("hf", Other)
    assert ENGINES["registry_probe_test"] is ScriptedEngine and ENGINES["hf"] is HFEngine

    register_engine("registry_probe_test", Other, replace=True)
    engine = build_engine("registry_probe_test", "model", "tokenizer", None, sampling={}, device="cpu")
    assert isinstance(engine, Other)
    assert engine.args == ("model", "tokenizer", None) and engine.kwargs == {"sampling": {}, "device": "cpu"}
