"""Every GPU check of the stack in one command, sized for one H100/H200 in under 8 minutes.

    # on the GPU machine: the wheels it lacks are carried (experiments/perf/gpu_check_wheels.sh says how)
    python3 experiments/perf/gpu_check.py --out $OUT
    # anywhere: build the configs and inputs, print the plan, write nothing
    python experiments/perf/gpu_check.py --dry-run
    # the same code paths end to end on CPU with the tiny model (what tests/test_gpu_check.py runs)
    python experiments/perf/gpu_check.py --device cpu --shape tiny --out /tmp/gpu_check

Checks, each time-boxed and recorded even when it fails (the error is kept, the others still run):

* `sft`: random weights from the real Qwen2.5-VL-7B config (no download), bf16, gradient checkpointing,
  DeepSpeed ZeRO-2 (AdamW, the paper recipe's frozen vision tower), one sample of 16 frames at 640x360
  (960 video tokens) + 512 text tokens: tokens/s, peak memory and MFU (model FLOPs: 6 x trainable
  LM parameters + 2 x frozen parameters per token, plus causal attention; recomputation not counted).
* `grpo` at 3B and 7B shape: one GRPO step (8 prompts x G 8, --new-tokens per completion, LoRA so the
  optimizer state stays small) from our own pieces (rollout engine -> rewards -> rollout batch ->
  log-probs recomputed by the training model -> loss -> backward -> step) with the `hf` and the `vllm`
  rollout engines side by side: completion tokens/s, step time, peak memory, weight-sync seconds.
* `eval`: evaluation samples/s (greedy, one completion per prompt) with `hf` vs `vllm` at 7B shape.
* `tests`: every `gpu`-marked test (`pytest -m gpu`, VT_REQUIRE_GPU=1).

Writes `gpu_check-<device>.json` and `.md` under --out, named after the device, and prints the table.
A check whose package is missing on the machine (vLLM, DeepSpeed) is recorded as "not run: <why>".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CHECKS = ("sft", "grpo", "eval", "tests")
# Dense bf16 tensor-core peak by the vendor's datasheets (SXM parts); MFU is reported against it.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
VIDEO_FRAMES, VIDEO_HEIGHT, VIDEO_WIDTH = 16, 360, 640  # -> 224x420 per frame, grid [8, 16, 30], 960 tokens


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="build configs and inputs, print the plan")
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "perf" / "results")
    parser.add_argument("--checks", nargs="+", default=list(CHECKS), choices=CHECKS)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for the tiny smoke run")
    parser.add_argument("--shape", choices=("paper", "tiny"), default="paper",
                        help="paper: 7B SFT, 3B+7B GRPO; tiny: the tiny model everywhere (CPU smoke)")
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=256, help="completion tokens per rollout")
    parser.add_argument("--sft-steps", type=int, default=4, help="timed SFT steps (after one warm-up)")
    parser.add_argument("--eval-samples", type=int, default=32)
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop starting new checks after this")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------ the plan
def model_configs(shape: str) -> dict[str, Any]:
    """name -> transformers config of every model the checks build."""
    from vt_model.model_configs import qwen25vl_3b_config, qwen25vl_7b_config, qwen25vl_tiny_config
    from vt_model.offline_tokenizers import build_tokenizer

    if shape == "tiny":
        return {"tiny": qwen25vl_tiny_config(build_tokenizer("tiny"))}
    return {"3b": qwen25vl_3b_config(), "7b": qwen25vl_7b_config()}


def video_config(shape: str):
    from vt_model.processing import FAST_MIN_PIXELS, VideoProcessorConfig

    if shape == "tiny":
        return VideoProcessorConfig(num_frames=4, max_frames=4, min_pixels=FAST_MIN_PIXELS,
                                    max_pixels=FAST_MIN_PIXELS)
    return VideoProcessorConfig()  # the paper's: 16 frames at <= 128*28*28 pixels


def parameter_counts(model) -> dict[str, int]:
    vision = sum(p.numel() for p in model.model.visual.parameters())
    total = sum(p.numel() for p in model.parameters())
    embed = model.model.language_model.embed_tokens.weight.numel()
    return {"total": total, "vision": vision, "language": total - vision, "embedding": embed}


def train_flops_per_sample(config, counts: dict[str, int], tokens: int, video_patches: int) -> float:
    """Model FLOPs of one SFT sample: trainable LM matmuls 6N per token (forward + backward, the
    embedding lookup excluded), the frozen vision tower's forward 2N per patch, and causal attention
    (6 x layers x hidden x tokens per token, half of the bidirectional 12)."""
    text = config.text_config
    tied = bool(getattr(config, "tie_word_embeddings", False) or text.tie_word_embeddings)
    lm_matmul = counts["language"] - (0 if tied else counts["embedding"])  # a tied table is the lm_head
    attention = 6 * text.num_hidden_layers * text.hidden_size * tokens * tokens
    return 6.0 * lm_matmul * tokens + 2.0 * counts["vision"] * video_patches + attention


def build_plan(args: argparse.Namespace) -> dict[str, Any]:
    from vt_model.loading import build_on_meta

    configs = model_configs(args.shape)
    vcfg = video_config(args.shape)
    frames = vcfg.num_frames
    height, width = (VIDEO_HEIGHT, VIDEO_WIDTH) if args.shape == "paper" else (56, 56)
    video_tokens = vcfg.num_video_tokens(frames, height, width)
    patches = 4 * video_tokens  # merge 2x2
    plan: dict[str, Any] = {"checks": list(args.checks), "shape": args.shape, "device": args.device,
                            "video": {"frames": frames, "source": [height, width],
                                      "resized": list(vcfg.resized_size(height, width)),
                                      "video_tokens": video_tokens, "patches": patches},
                            "text_tokens": args.text_tokens, "models": {}}
    for name, config in configs.items():
        model, _ = build_on_meta(config)
        counts = parameter_counts(model)
        tokens = video_tokens + args.text_tokens
        plan["models"][name] = {
            "params": counts,
            "sft_tokens_per_sample": tokens,
            "sft_flops_per_sample": train_flops_per_sample(config, counts, tokens, patches),
        }
    sft_model = "tiny" if args.shape == "tiny" else "7b"
    plan["sft"] = {"model": sft_model, "zero_stage": 2, "gradient_checkpointing": True, "dtype": "bfloat16",
                   "vision": "frozen", "steps": args.sft_steps}
    plan["grpo"] = {"models": list(configs), "prompts": args.prompts, "group": args.group,
                    "new_tokens": args.new_tokens, "engines": ["hf", "vllm"], "trainable": "LoRA r=16"}
    plan["eval"] = {"model": sft_model, "samples": args.eval_samples, "engines": ["hf", "vllm"]}
    return plan


# ------------------------------------------------------------------------------------------ helpers
def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def peak_memory_gib(device: str) -> float | None:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return None


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def random_model(config, device: str, dtype):
    """Random weights straight on the device (no CPU copy, no download)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    return model


def tokenizer_for(shape: str):
    from vt_model.offline_tokenizers import build_tokenizer

    return build_tokenizer("tiny" if shape == "tiny" else "qwen")


def synthetic_frames(shape: str, seed: int = 0):
    import numpy as np

    frames, height, width = (VIDEO_FRAMES, VIDEO_HEIGHT, VIDEO_WIDTH) if shape == "paper" else (4, 56, 56)
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8), np.arange(frames) * 0.5


def sample_record(tokenizer, text_tokens: int, index: int = 0):
    """A multiple-choice record whose question + trace target come to about `text_tokens` tokens."""
    from vt_data.records import VideoQA

    step = "<time>00:02-00:04</time><caption>a red square moves left</caption><think>so it is red</think>"
    per_step = max(1, len(tokenizer(step)["input_ids"]))
    trace = step * max(1, (text_tokens - 80) // per_step)
    return VideoQA(problem=f"Question {index}: what colour is the shape that moves first?", path="clip.mp4",
                   data_source="synthetic", options=["A. red", "B. green", "C. blue", "D. white"],
                   solution="<answer>A</answer>", process=trace, problem_id=index)


# ------------------------------------------------------------------------------------------ checks
def check_sft(args, plan) -> dict[str, Any]:
    import torch

    try:
        import deepspeed
    except ImportError:
        return {"status": "not run: deepspeed is not installed (carry its wheel: gpu_check_wheels.sh)"}
    from vt_model.collate import collate_sft, encode_sft_example
    from vt_model.positions import model_inputs_positions

    name = plan["sft"]["model"]
    config = model_configs(args.shape)[name]
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = random_model(config, args.device, dtype)
    model.model.visual.requires_grad_(False)  # the paper recipe's frozen tower (experiment config)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    tokenizer = tokenizer_for(args.shape)
    frames, timestamps = synthetic_frames(args.shape)
    example = encode_sft_example(tokenizer, sample_record(tokenizer, args.text_tokens), frames,
                                 video_config(args.shape), timestamps=timestamps)
    batch = collate_sft([example], tokenizer.pad_token_id)
    batch.update(model_inputs_positions(model.config, batch))
    keys = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "pixel_values_videos",
            "video_grid_thw", "second_per_grid_ts", "position_ids")
    inputs = {k: batch[k].to(args.device) for k in keys}
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(dtype)
    tokens = int(batch["attention_mask"].sum())
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6, fused=args.device.startswith("cuda"))
    ds_config = {
        "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
        "bf16": {"enabled": dtype == torch.bfloat16}, "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
        "gradient_clipping": 1.0, "steps_per_print": 10**9,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    times = []
    for step in range(1 + args.sft_steps):
        synchronize(args.device)
        start = time.perf_counter()
        loss = engine(**inputs).loss
        engine.backward(loss)
        engine.step()
        synchronize(args.device)
        if step:  # the first step warms up kernels and allocations
            times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    patches = int(batch["pixel_values_videos"].shape[0])
    flops = train_flops_per_sample(config, parameter_counts(model), tokens, patches)
    peak = peak_flops(device_name(args.device))
    result = {"status": "ok", "model": name, "tokens_per_sample": tokens, "step_s": seconds,
              "tokens_per_s": tokens / seconds, "peak_memory_gib": peak_memory_gib(args.device),
              "achieved_tflops": flops / seconds / 1e12, "loss": float(loss.detach())}
    result["mfu"] = flops / seconds / peak if peak else None
    del engine, model, optimizer
    return result


def grpo_items(args, tokenizer, count: int):
    from vt_grpo.rollout import PromptItem
    from vt_model.processing import preprocess_video
    from vt_model.prompts import encode_prompt

    items = []
    for i in range(count):
        frames, timestamps = synthetic_frames(args.shape, seed=i)
        record = sample_record(tokenizer, 16, index=i)
        video = preprocess_video(frames, timestamps, video_config(args.shape))
        prompt = encode_prompt(tokenizer, record, video, "video_thinker")
        items.append(PromptItem(prompt=prompt, record=record, key=f"gpu-check-{i}"))
    return items


def grpo_step(args, engine, model, tokenizer, items, settings, optimizer) -> dict[str, Any]:
    """One GRPO step from the stack's pieces; completion tokens/s of the rollout and the step's time."""
    import torch

    from vt_grpo.loss import grpo_loss
    from vt_grpo.rewards import RewardSet
    from vt_grpo.rollout import build_rollout_batch, policy_logprobs, sample_groups, score_groups

    synchronize(args.device)
    start = time.perf_counter()
    model.eval()
    with torch.no_grad():
        groups = sample_groups(model, tokenizer, items, settings, engine=engine)
    synchronize(args.device)
    generated = time.perf_counter()
    score_groups(groups, RewardSet())
    rollout = build_rollout_batch(groups, tokenizer.pad_token_id, model.get_base_model().config)
    model.train()
    for mb in rollout.split(settings.micro_batch_per_device):
        logp, _ = policy_logprobs(model, mb.inputs, mb.completion_mask)
        mask = mb.completion_mask.to(logp.device)
        loss, _ = grpo_loss(logp, None, None, mb.advantages.to(logp.device), mask, beta=0.0, eps_low=0.2,
                            eps_high=0.2, normaliser=float(len(rollout)))
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize(args.device)
    updated = time.perf_counter()
    sync_start = time.perf_counter()
    engine.after_update(model)
    synchronize(args.device)
    done = time.perf_counter()
    completion_tokens = sum(len(s) for g in groups for s in g.sequences)
    return {"completion_tokens": completion_tokens, "rollout_s": generated - start,
            "completion_tokens_per_s": completion_tokens / (generated - start),
            "update_s": updated - generated, "weight_sync_s": done - sync_start, "step_s": done - start,
            "peak_memory_gib": peak_memory_gib(args.device)}


def save_for_vllm(model, tokenizer, directory: Path) -> None:
    from vt_model.generation import _base

    _base(model).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def check_grpo_and_eval(args, plan, checks: list[str]) -> dict[str, Any]:
    """GRPO at every model shape with both engines; evaluation throughput on the SFT-sized model."""
    import tempfile

    import torch

    from vt_grpo.rollout_engines import HFRolloutEngine
    from vt_grpo.settings import GRPOSettings
    from vt_model.adapters import LoraSettings, apply_lora

    results: dict[str, Any] = {}
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    tokenizer = tokenizer_for(args.shape)
    settings = GRPOSettings(prompts_per_step=args.prompts, generations_per_prompt=args.group,
                            micro_batch_per_device=args.group, max_completion_length=args.new_tokens,
                            beta=0.0)
    try:
        import vllm  # noqa: F401

        has_vllm = True
    except ImportError:
        has_vllm = False
    for name, config in model_configs(args.shape).items():
        model = apply_lora(random_model(config, args.device, dtype), LoraSettings(r=16, alpha=32))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
        items = grpo_items(args, tokenizer, args.prompts)
        entry: dict[str, Any] = {}
        if "grpo" in checks:
            grpo_step(args, HFRolloutEngine(), model, tokenizer, items[:1], settings, optimizer)  # warm-up
            entry["hf"] = grpo_step(args, HFRolloutEngine(), model, tokenizer, items, settings, optimizer)
        eval_entry: dict[str, Any] = {}
        if "eval" in checks and name == plan["eval"]["model"]:
            eval_entry["hf"] = eval_throughput(args, HFRolloutEngine(), model, tokenizer)
        if has_vllm:
            from vt_grpo.vllm_rollout import VLLMRolloutEngine

            with tempfile.TemporaryDirectory() as directory:
                save_for_vllm(model, tokenizer, Path(directory))
                engine = VLLMRolloutEngine(model_path=directory, video_config=video_config(args.shape),
                                           gpu_memory_utilization=0.35)
                if "grpo" in checks:
                    grpo_step(args, engine, model, tokenizer, items[:1], settings, optimizer)  # warm-up
                    entry["vllm"] = grpo_step(args, engine, model, tokenizer, items, settings, optimizer)
                if eval_entry:
                    eval_entry["vllm"] = eval_throughput(args, engine, model, tokenizer)
                engine.close()
        else:
            why = "not run: vllm is not installed on this machine"
            entry["vllm"] = {"status": why}
            if eval_entry:
                eval_entry["vllm"] = {"status": why}
        if entry:
            results.setdefault("grpo", {})[name] = entry
        if eval_entry:
            results["eval"] = {"model": name, **eval_entry}
        del model, optimizer
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    return results


def eval_throughput(args, engine, model, tokenizer) -> dict[str, Any]:
    """Samples/s of greedy-length evaluation: one completion per prompt, batches of 8 prompts."""
    from types import SimpleNamespace

    import torch

    # the sampling fields a rollout engine reads; one completion per prompt, as an evaluation
    settings = SimpleNamespace(generations_per_prompt=1, temperature=1.0, top_p=1.0, top_k=0,
                               max_completion_length=args.new_tokens)
    items = grpo_items(args, tokenizer, args.eval_samples)
    model.eval()
    synchronize(args.device)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(items), 8):
            engine.generate(model, tokenizer, [it.prompt for it in items[i:i + 8]], settings)
    synchronize(args.device)
    seconds = time.perf_counter() - start
    return {"samples": len(items), "seconds": seconds, "samples_per_s": len(items) / seconds}


def gpu_test_files() -> list[str]:
    """Test files holding `gpu`-marked tests: collecting only them keeps pytest from importing the
    suite's other dependencies, which the GPU machine's image does not carry (hydra, webdataset, ...)."""
    files = sorted({*REPO.glob("packages/*/tests/test_*.py"), *REPO.glob("tests/test_*.py")})
    return [str(f.relative_to(REPO)) for f in files if "pytest.mark.gpu" in f.read_text(encoding="utf-8")]


def check_tests(args) -> dict[str, Any]:
    env = {**os.environ, "VT_REQUIRE_GPU": "1" if args.device.startswith("cuda") else "0"}
    files = gpu_test_files()
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    return {"status": "ok" if proc.returncode in (0, 5) else f"failed (exit {proc.returncode})",
            "files": files, "returncode": proc.returncode, "summary": tail[-1] if tail else "", "tail": tail}


# ------------------------------------------------------------------------------------------ report
def markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU check: {report['device']}", "",
             f"{report['date']} | torch {report['versions'].get('torch')} | transformers "
             f"{report['versions'].get('transformers')} | vllm {report['versions'].get('vllm')} | "
             f"wall {report['wall_s']:.0f} s", "", "| check | figure | value |", "| --- | --- | --- |"]

    def row(check: str, figure: str, value: Any) -> None:
        if isinstance(value, float):
            value = f"{value:.4g}"
        lines.append(f"| {check} | {figure} | {value} |")

    sft = report["results"].get("sft", {})
    for key in ("status", "model", "tokens_per_sample", "tokens_per_s", "step_s", "achieved_tflops", "mfu",
                "peak_memory_gib"):
        if key in sft:
            row("sft", key, sft[key])
    for model, engines in report["results"].get("grpo", {}).items():
        for engine, figures in engines.items():
            for key, value in figures.items():
                row(f"grpo {model} {engine}", key, value)
    for engine, figures in report["results"].get("eval", {}).items():
        if isinstance(figures, dict):
            for key, value in figures.items():
                row(f"eval {engine}", key, value)
    tests = report["results"].get("tests", {})
    if tests:
        row("tests", "pytest -m gpu", tests.get("summary", tests.get("status")))
    for check, error in report["errors"].items():
        row(check, "error", error.splitlines()[-1][:200])
    return "\n".join(lines) + "\n"


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for name in ("torch", "transformers", "deepspeed", "vllm", "peft"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    plan = build_plan(args)
    if args.dry_run:
        print(json.dumps(plan, indent=1, default=str))
        return 0
    name = device_name(args.device)
    report: dict[str, Any] = {"device": name, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "versions": versions(), "plan": plan, "results": {}, "errors": {}}

    def run(check: str, fn) -> None:
        if time.perf_counter() - started > args.budget_s:
            report["results"][check] = {"status": f"not run: past the {args.budget_s:.0f} s budget"}
            return
        try:
            report["results"].update(fn())
        except Exception:  # one failing check must not cost the others' figures
            report["errors"][check] = traceback.format_exc()
            print(report["errors"][check], file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            import torch

            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()

    if "sft" in args.checks:
        run("sft", lambda: {"sft": check_sft(args, plan)})
    if {"grpo", "eval"} & set(args.checks):
        run("grpo", lambda: check_grpo_and_eval(args, plan, args.checks))
    if "tests" in args.checks:
        run("tests", lambda: {"tests": check_tests(args)})
    report["wall_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_check-" + "".join(c if c.isalnum() else "_" for c in name).strip("_")[:60]
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    text = markdown(report)
    (args.out / f"{stem}.md").write_text(text, encoding="utf-8")
    print(text, flush=True)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
