"""The evaluation protocol as data: frames, pixels, decoding, prompt and answer extraction.

Defaults are the paper's (method.md §8.2; benchmarks.md §1.7 "VT"): 16 frames sampled uniformly, at
most 128×28×28 pixels per frame, temperature 0.1 with top_p 0.001 (near-greedy: top_p keeps only the
most likely token, so sampling picks it), at most 1,024 new tokens, the Video-Thinker prompt for every
model, and the paper's answer-extraction order (method.md §8.3 steps 1-4, `strict`) as the primary
score with the lenient A-O scan beside it (never mixed into the primary number, §10 item 8).

**min_pixels** (the paper does not state it): 128×28×28, qwen-vl-utils' `VIDEO_MIN_PIXELS`, which the
released Video-R1 / Video-Thinker scripts get through `fetch_video`. With min == max every frame is
resized to about the budget: large frames shrink, small ones are upscaled. `None` takes the value in
the model directory's video_preprocessor_config.json (vt_model.tiny writes 4×28×28 so 56×56 synthetic
clips stay small; the `tiny_cpu` preset says so explicitly).

Presets (conf/protocol/*.yaml mirror them; `PRESETS` holds the same values for code and tests):

- `video_thinker`: the defaults above.
- `video_r1`: Video-R1's own setting (§10 item 4 asks for baselines under their native protocol too):
  the Video-R1 prompt (all reasoning in one `<think>`), ≤256×28×28 pixels, 16 frames (the frame count
  of Table 1), temperature 0.1 / top_p 0.001 / 1,024 tokens (VR1's code; its README says 0.01).
  Known gap: VR1 reads the *first* `<answer>` tag, our one scorer the *last* (benchmarks.md §1.2).
- `video_thinker_qwen3vl`: `video_thinker` with the pixel budget in Qwen3-VL's units (its video processor
  budgets the whole clip): 16 frames × 128 tokens × 32×32 = 2,097,152, the same 1,024-token ceiling.
- `tiny_cpu`: the inputs of the tiny CPU experiment (`make demo`): 8 frames, the `compact` prompt, the
  tiny model's pixel floor and 96 new tokens. Not a paper setting; its numbers are the demo's only.

Every prediction carries `prompt_hash(rendered_prompt, protocol)`: a rerun redoes exactly the samples
whose prompt or output-relevant settings changed. Grounding records (Charades-STA, ActivityNet
Captions) use `grounding_template`, the project's own grounding prompt (method.md §8.5 and §11: the
paper's is not printed), registered here under `video_thinker_grounding` / `direct_grounding`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from vt_data.scoring import MRA_VARIANTS, SCORE_MODES
from vt_model.processing import PAPER_MAX_PIXELS, QWEN_VIDEO_MIN_PIXELS, VideoProcessorConfig
from vt_model.prompts import TEMPLATES, PromptTemplate, register_template

VIDEO_BACKENDS = ("decord", "pyav")
FRAME_RULES = ("linspace", "centers")

# --- the project's grounding prompts (our wording) -------------------------------------------------
_GROUNDING_SUFFIX = (
    "The text above describes one moment of the video. Analyse the key segments of the video with <time>, "
    "<caption> and <think> tags, reason your way to a conclusion, and write only the start and end of that "
    "moment as MM:SS-MM:SS inside <answer></answer>. Follow the format given in the system message."
)
_DIRECT_GROUNDING_SUFFIX = (
    "The text above describes one moment of the video. Write only its start and end as MM:SS-MM:SS inside "
    "<answer></answer>."
)
GROUNDING_TEMPLATES = (
    PromptTemplate(
        name="video_thinker_grounding",
        system=TEMPLATES["video_thinker"].system,
        user_suffix=_GROUNDING_SUFFIX,
    ),
    PromptTemplate(name="direct_grounding", system=None, user_suffix=_DIRECT_GROUNDING_SUFFIX),
)
for _template in GROUNDING_TEMPLATES:
    if _template.name not in TEMPLATES:
        register_template(_template)


@dataclass
class Protocol:
    """Every setting that changes what the model sees or how its output is read (see module doc)."""

    name: str = "video_thinker"
    # Frames: `num_frames` sampled uniformly (`frame_rule`), or `fps` frames per second (then
    # num_frames=None) capped at `max_frames`.
    num_frames: int | None = 16
    max_frames: int = 16
    fps: float | None = None
    frame_rule: str = "linspace"
    video_backend: str = "decord"
    # Pixels per frame after Qwen's smart_resize; None = the model directory's value.
    min_pixels: int | None = QWEN_VIDEO_MIN_PIXELS
    max_pixels: int = PAPER_MAX_PIXELS
    # Prompt: a vt_model.prompts template name, for grounding records `grounding_template`.
    template: str = "video_thinker"
    grounding_template: str = "video_thinker_grounding"
    include_timestamps: bool = False
    # Decoding.
    do_sample: bool = True
    temperature: float = 0.1
    top_p: float = 0.001
    top_k: int = 0
    max_new_tokens: int = 1024
    seed: int = 0
    # Scoring: the extractor of the primary number ("strict" = method.md §8.3 steps 1-4); the other
    # mode is always reported beside it. `mra_variant` scores regression answers.
    answer_extraction: str = "strict"
    mra_variant: str = "vsibench"

    def __post_init__(self) -> None:
        problems = []
        if self.num_frames is not None and not 1 <= self.num_frames <= self.max_frames:
            problems.append(f"num_frames={self.num_frames} must be in [1, max_frames={self.max_frames}]")
        if (self.num_frames is None) == (self.fps is None):
            problems.append("set exactly one of num_frames and fps")
        if self.fps is not None and self.fps <= 0:
            problems.append(f"fps must be positive, got {self.fps}")
        if self.frame_rule not in FRAME_RULES:
            problems.append(f"frame_rule must be one of {FRAME_RULES}, got {self.frame_rule!r}")
        if self.video_backend not in VIDEO_BACKENDS:
            problems.append(f"video_backend must be one of {VIDEO_BACKENDS}, got {self.video_backend!r}")
        if self.min_pixels is not None and not 0 < self.min_pixels <= self.max_pixels:
            problems.append(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        for name in ("template", "grounding_template"):
            if getattr(self, name) not in TEMPLATES:
                problems.append(
                    f"{name}={getattr(self, name)!r} is not a prompt template; known: "
                    f"{', '.join(sorted(TEMPLATES))}"
                )
        if self.temperature <= 0 and self.do_sample:
            problems.append("temperature must be > 0 when do_sample (use do_sample=false for greedy)")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.answer_extraction not in SCORE_MODES:
            problems.append(f"answer_extraction must be one of {SCORE_MODES}, got {self.answer_extraction!r}")
        if self.mra_variant not in MRA_VARIANTS:
            problems.append(f"mra_variant must be one of {MRA_VARIANTS}, got {self.mra_variant!r}")
        if problems:
            raise ValueError(f"invalid protocol {self.name!r}: " + "; ".join(problems))

    # --- views -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Protocol:
        """From `to_dict()` output or a YAML mapping (a Hydra `_target_` key is ignored)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields - {"_target_"})
        if unknown:
            raise ValueError(f"unknown protocol field(s) {unknown}; known: {sorted(fields)}")
        return cls(**{k: v for k, v in data.items() if k in fields})

    def fingerprint(self) -> str:
        """sha256 of every setting except the name: two presets with equal settings are one protocol."""
        settings = {k: v for k, v in self.to_dict().items() if k != "name"}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def template_for(self, problem_type: str) -> str:
        return self.grounding_template if problem_type == "grounding" else self.template

    def video_config(self, model_config: VideoProcessorConfig | None = None) -> VideoProcessorConfig:
        """The preprocessing config: patch geometry and normalisation from the model directory's config,
        frames and pixel budget from this protocol (min_pixels None: the model's)."""
        base = model_config or VideoProcessorConfig()
        min_pixels = self.min_pixels if self.min_pixels is not None else base.min_pixels
        return dataclasses.replace(
            base,
            num_frames=self.num_frames,
            max_frames=self.max_frames,
            fps=self.fps,
            min_pixels=min(min_pixels, self.max_pixels),
            max_pixels=self.max_pixels,
        )

    def sampling(self) -> dict[str, Any]:
        """Keyword arguments of `vt_model.generation.generate`."""
        return {
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens,
        }


def prompt_hash(prompt_text: str, protocol: Protocol) -> str:
    """sha256 of the rendered prompt and the protocol's settings: the identity of one prediction."""
    return hashlib.sha256(f"{prompt_text}\n{protocol.fingerprint()}".encode()).hexdigest()


PRESETS: dict[str, Protocol] = {
    "video_thinker": Protocol(),
    "video_r1": Protocol(name="video_r1", template="video_r1", max_pixels=256 * 28 * 28),
    "video_thinker_qwen3vl": Protocol(name="video_thinker_qwen3vl", min_pixels=16 * 128 * 32 * 32,
                                      max_pixels=16 * 128 * 32 * 32),
    "tiny_cpu": Protocol(name="tiny_cpu", num_frames=8, max_frames=8, template="compact",
                         min_pixels=4 * 28 * 28, max_new_tokens=96),
}


def get_protocol(name: str, **overrides: Any) -> Protocol:
    """A preset by name, with field overrides."""
    if name not in PRESETS:
        raise KeyError(f"unknown protocol preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return dataclasses.replace(PRESETS[name], **overrides)


__all__ = ["Protocol", "PRESETS", "get_protocol", "prompt_hash", "GROUNDING_TEMPLATES"]
