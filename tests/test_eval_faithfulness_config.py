"""The evaluation configs turn the faithfulness metrics on: the 7B evaluation (experiment
video_thinker_7b_eval) judges clues with the paper's checker, Qwen2.5-VL-7B-Instruct, as a model checker
on the rank's device and re-asks a fixed subset for reliance; the default judges the synthetic set with
the rule-based checker and says "off" for a real benchmark until a checker is chosen. Composed and built
without loading weights."""

from __future__ import annotations

from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parents[1] / "conf"


def build(overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir

    from vt_eval.cli import build_faithfulness
    from vt_model.training.app import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    return build_faithfulness(cfg, "cuda:3")


def test_the_7b_evaluation_runs_faithfulness_with_a_model_checker(monkeypatch):
    from vt_model.checker import ModelChecker

    monkeypatch.setenv("VT_QWEN25VL_7B", "/models/Qwen2.5-VL-7B-Instruct")
    built = build(["experiment=video_thinker_7b_eval", "benchmark=video_holmes"])
    checker = built["clue_checker"]
    assert isinstance(checker, ModelChecker) and checker._loaded is None  # nothing loaded yet
    assert checker.model_path == "/models/Qwen2.5-VL-7B-Instruct" and checker.dtype == "bfloat16"
    assert checker.device == "cuda:3"  # the rank's own GPU, not cuda:0 for every rank
    assert built["reliance"] is not None and built["reliance"].every == 4


@pytest.mark.parametrize(
    ("overrides", "checker"),
    [
        ([], "RuleChecker"),  # synthetic: the rule-based checker reads its captions
        (["benchmark=video_holmes"], None),  # auto: no checker for real captions -> "off"
        (["benchmark=video_holmes", "clue_checker=openai"], "ChatChecker"),
        (["~clue_checker"], None),
    ],
)
def test_the_default_and_the_other_checkers(overrides, checker):
    built = build(overrides)
    assert (type(built["clue_checker"]).__name__ if built["clue_checker"] else None) == checker
    assert built["reliance"] is not None  # reliance is on by default
    assert build([*overrides, "faithfulness.reliance.enabled=false"])["reliance"] is None
