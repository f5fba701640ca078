"""The model-backed hindsight checker: the curation pipeline's LocalChecker slot filled by a vt-model
model loaded from its directory (the tiny one here), text-only and with the video."""

from __future__ import annotations

import numpy as np

from vt_data.curate.models import CheckReply, CheckRequest, LocalChecker
from vt_data.video import encode_video
from vt_model.checker import ModelChecker, check_prompt

REQUEST = CheckRequest(question="What colour is the shape shown right after the green shape?",
                       options=("A. red", "B. green", "C. blue", "D. yellow"),
                       evidence=(("00:02-00:04", "a green circle"), ("00:04-00:06", "a red square")),
                       duration=8.0)


def test_prompt_carries_every_note_and_option():
    text = check_prompt(REQUEST)
    assert "[00:02-00:04] a green circle" in text and "[00:04-00:06] a red square" in text
    assert text.index("Notes:") < text.index("Question:") < text.index("D. yellow")


def test_checker_satisfies_the_protocol_and_answers(tiny_dir, tmp_path):
    checker = ModelChecker(model_path=str(tiny_dir), max_new_tokens=8)
    assert isinstance(checker, LocalChecker) and checker.name == f"local:{tiny_dir}"
    reply = checker.check(REQUEST)
    assert isinstance(reply, CheckReply)
    assert reply.answer is None or reply.answer in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    assert reply.usage.prompt_tokens > 20 and 1 <= reply.usage.completion_tokens <= 8

    frames = np.zeros((8, 56, 56, 3), dtype=np.uint8)
    frames[:, 20:36, 20:36] = (200, 30, 30)
    video = tmp_path / "clip.mp4"
    encode_video(frames, video, fps=4)
    with_video = checker.check(CheckRequest(question=REQUEST.question, options=REQUEST.options,
                                            evidence=REQUEST.evidence, video_path=str(video)))
    # The video's tokens are in the prompt, so the prompt is longer than the text-only one.
    assert with_video.usage.prompt_tokens > reply.usage.prompt_tokens
