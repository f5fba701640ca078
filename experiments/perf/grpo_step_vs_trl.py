"""GRPO step time: ours (vt_grpo.module.GRPOModule in a Lightning Trainer) against TRL's GRPOTrainer,
and our video step with the video encoded once per group against once per completion.

Both parts run in one process on a tiny random Qwen2.5-VL written to a temporary directory (TRL gets
the same weights loaded from that directory: with beta > 0 it rebuilds its reference model from
`config._name_or_path`, stack.md §12).

A. ours vs TRL, text prompts. The same P prompts per step, G completions each, the same maximum
   completion length, one optimizer step per rollout batch (μ = 1), β = 0.04 with a frozen reference,
   temperature 1.0, no top-p/top-k, AdamW at the same learning rate, one micro-batch holding all P × G
   completions on each side (TRL: per_device_train_batch_size = P × G, no accumulation), and the same
   reward (a hash of the completion text, so every group has reward variance and nothing is skipped;
   our zero-variance skipping is off here anyway). TRL has no video path (trl#4144); our pipeline
   always carries one, so our prompts get the smallest possible video (2 frames of 28 × 28: one video
   token) in front of the same text. Reported: median seconds per step after warm-up steps, and the
   ratio. Skipped with a message when `trl` (and `datasets`) are not installed.
B. ours, video prompts (--frames frames of --size × --size), encode once vs once per completion: the
   same step with (i) generation encoding each video once and the log-prob passes encoding each
   distinct video of a micro-batch once (the default), and (ii) generation repeating the pixels G times
   (`generate(encode_once=False)`) and the rollout batch holding one video copy per completion row, as
   a pipeline without the encode-once path would. Same seed, so the same samples in both.

Prints the figures and the machine (platform, CPU count, torch threads, load average). Not a test:

    python experiments/perf/grpo_step_vs_trl.py --prompts 4 --group 8 --new-tokens 32 --steps 6
    python experiments/perf/grpo_step_vs_trl.py --skip-trl --frames 16 --size 224   # part B only
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time
import zlib
from functools import partial

import numpy as np
import torch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=4, help="P, prompts per step")
    parser.add_argument("--group", type=int, default=8, help="G, completions per prompt")
    parser.add_argument("--new-tokens", type=int, default=32, help="maximum completion length")
    parser.add_argument("--steps", type=int, default=6, help="measured steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="steps run before measuring")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--frames", type=int, default=16, help="part B: frames per video")
    parser.add_argument("--size", type=int, default=224, help="part B: frame side in pixels")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--skip-trl", action="store_true", help="part B only")
    parser.add_argument("--skip-video", action="store_true", help="part A only")
    return parser.parse_args()


def text_hash_reward(completions, samples=None, **_):
    """Deterministic, different for different texts: every group has reward variance."""
    texts = [c if isinstance(c, str) else str(c) for c in completions]
    return [zlib.crc32(t.encode("utf-8", "replace")) % 1000 / 999 for t in texts]


QUESTIONS = [
    "What colour is the shape shown from 00:02 to 00:04?",
    "What colour is the last shape shown?",
    "What colour is the shape shown right after the red square?",
    "What colour is the first shape shown?",
]


def records(n: int):
    from vt_data.records import VideoQA

    return [
        VideoQA(
            problem=QUESTIONS[i % len(QUESTIONS)] + f" (#{i})",
            path=f"clip{i}.mp4",
            data_source="synthetic",
            options=["A. red", "B. green", "C. blue", "D. yellow"],
            solution="<answer>B</answer>",
            problem_id=i,
            duration=8.0,
        )
        for i in range(n)
    ]


class FixedPrompts:
    """The `PromptSource` protocol (draw / state_dict) over a fixed list, cycled."""

    def __init__(self, items):
        self.items, self.next = items, 0

    def draw(self, n):
        out = [self.items[(self.next + i) % len(self.items)] for i in range(n)]
        self.next += n
        return out

    def state_dict(self):
        return None


class StepTimer:
    """Lightning callback: wall seconds of every training step."""

    def __init__(self):
        from lightning.pytorch import Callback

        timer = self

        class _Callback(Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                timer.started = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                timer.seconds.append(time.perf_counter() - timer.started)

        self.callback, self.seconds, self.started = _Callback(), [], 0.0


def prompt_items(tokenizer, processor, n, frames, size, seed=0):
    from vt_grpo.rollout import PromptItem
    from vt_model.processing import preprocess_video
    from vt_model.prompts import encode_prompt

    rng = np.random.default_rng(seed)
    items = []
    for record in records(n):
        pixels = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
        video = preprocess_video(pixels, np.arange(frames) * 0.5, processor)
        prompt = encode_prompt(tokenizer, record, video, "direct")
        prompt.pop("prompt_text", None)
        items.append(PromptItem(prompt=prompt, record=record, key=record.key))
    return items


def run_ours(model_dir, items, args, *, encode_once=True) -> list[float]:
    """Seconds per GRPO step of our module on `items` (one micro-batch of P × G completions)."""
    import lightning.pytorch as pl

    import vt_grpo.module as grpo_module
    import vt_model.generation as generation
    from vt_grpo.datamodule import StepTickets
    from vt_grpo.module import GRPOModule
    from vt_grpo.rewards import REGISTRY, register_reward
    from vt_grpo.settings import GRPOSettings
    from vt_model.loading import load_tokenizer
    from vt_model.training.models import build_model

    if "bench_text_hash" not in REGISTRY:
        register_reward("bench_text_hash", 0.0, 1.0)(text_hash_reward)
    settings = GRPOSettings(
        prompts_per_step=args.prompts,
        generations_per_prompt=args.group,
        micro_batch_per_device=args.prompts * args.group,
        max_completion_length=args.new_tokens,
        beta=0.04,
        temperature=1.0,
        skip_zero_variance=False,
        max_grad_norm=1.0,
    )
    module = GRPOModule(
        partial(build_model, model_dir),
        optimizer=partial(torch.optim.AdamW, lr=args.lr),
        tokenizer=load_tokenizer(model_dir),
        rewards={"bench_text_hash": 1.0},
        settings=settings,
    )
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        callbacks=[timer.callback],
    )
    original_generate, original_build = generation.generate, grpo_module.build_rollout_batch
    if not encode_once:
        # The baseline: pixels repeated G times in generation, one video copy per row in the loss passes.
        generation.generate = partial(original_generate, encode_once=False)
        grpo_module.build_rollout_batch = lambda *a, **k: per_row_videos(original_build(*a, **k))
    torch.manual_seed(0)
    try:
        trainer.fit(module, train_dataloaders=StepTickets(FixedPrompts(items)))
    finally:
        generation.generate, grpo_module.build_rollout_batch = original_generate, original_build
    return timer.seconds[args.warmup :]


def per_row_videos(batch):
    """A RolloutBatch whose every row carries its own copy of its video (no sharing within a group)."""
    inputs = dict(batch.inputs)
    sizes = inputs["video_grid_thw"].prod(-1).tolist()
    pixels = torch.split(inputs["pixel_values_videos"], sizes, dim=0)
    index = inputs["video_index"]
    inputs["pixel_values_videos"] = torch.cat([pixels[int(v)] for v in index], dim=0)
    inputs["video_grid_thw"] = inputs["video_grid_thw"][index]
    inputs["second_per_grid_ts"] = inputs["second_per_grid_ts"][index]
    inputs["video_index"] = torch.arange(len(index))
    return dataclasses.replace(batch, inputs=inputs)


def run_trl(model_dir, tokenizer, prompt_texts, args) -> list[float] | None:
    """Seconds per GRPOTrainer step with the matching settings; None when trl is not installed."""
    try:
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as err:
        print(f"TRL comparison skipped: {err} (needs trl==1.16.0 and its `datasets` dependency installed)")
        return None
    from vt_model.loading import load_model

    wanted = dict(
        output_dir=os.path.join(model_dir, "trl-out"),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        max_steps=args.warmup + args.steps,
        learning_rate=args.lr,
        per_device_train_batch_size=args.prompts * args.group,
        gradient_accumulation_steps=1,
        num_generations=args.group,
        max_completion_length=args.new_tokens,
        beta=0.04,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        num_iterations=1,
        epsilon=0.2,
        loss_type="grpo",
        max_grad_norm=1.0,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        seed=0,
        steps_per_generation=1,
    )
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    config = GRPOConfig(**{k: v for k, v in wanted.items() if k in fields})
    seconds: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k):
            seconds.append(time.perf_counter() - self.started)

    dataset = Dataset.from_list([{"prompt": text} for text in prompt_texts])
    model = load_model(model_dir)  # from the directory, so its _name_or_path lets TRL rebuild the reference
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[text_hash_reward],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Timer()],
    )
    torch.manual_seed(0)
    trainer.train()
    return seconds[args.warmup :]


def describe(label, seconds):
    if not seconds:
        return float("nan")
    median = statistics.median(seconds)
    print(
        f"{label:<44} median {median:.3f} s/step  best {min(seconds):.3f}  "
        f"(steps {', '.join(f'{s:.3f}' for s in seconds)})"
    )
    return median


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import __version__ as transformers_version

    from vt_model.loading import load_model, load_tokenizer
    from vt_model.processing import VideoProcessorConfig
    from vt_model.tiny import write_tiny_model

    print(
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
        f"cpu_count={os.cpu_count()} | torch threads={torch.get_num_threads()} | torch {torch.__version__} | "
        f"transformers {transformers_version} | load avg {os.getloadavg()[0]:.2f} (1 min)"
    )
    print(
        f"P={args.prompts} prompts × G={args.group} completions × up to {args.new_tokens} new tokens "
        f"per step, β=0.04, μ=1, one micro-batch; {args.warmup} warm-up + {args.steps} measured steps"
    )
    with tempfile.TemporaryDirectory() as model_dir:
        write_tiny_model(model_dir, seed=0)
        tokenizer = load_tokenizer(model_dir)
        n_params = sum(p.numel() for p in load_model(model_dir).parameters())
        print(f"model: tiny random Qwen2.5-VL, {n_params:,} parameters")

        if not args.skip_trl:
            print("\nA. one GRPO step, text prompts: ours vs TRL GRPOTrainer")
            small = VideoProcessorConfig(num_frames=2, max_frames=2, min_pixels=28 * 28, max_pixels=28 * 28)
            items = prompt_items(
                tokenizer, small, args.prompts * (args.warmup + args.steps), frames=2, size=28
            )
            ours = describe("ours (GRPOModule, 1-token video)", run_ours(model_dir, items, args))
            from vt_model.prompts import build_messages, render_prompt

            # The same user text without the video item (TRL renders the chat template itself).
            texts = [
                render_prompt(
                    tokenizer,
                    [
                        {"role": "user", "content": m["content"][1]["text"]}
                        for m in build_messages(r, "direct")
                    ],
                )
                for r in records(args.prompts * (args.warmup + args.steps))
            ]
            trl = run_trl(model_dir, tokenizer, texts, args)
            if trl is not None:
                theirs = describe("TRL GRPOTrainer (text only)", trl)
                print(f"ours / TRL step time: {ours / theirs:.2f} (below 1: ours is faster)")

        if not args.skip_video:
            print(
                f"\nB. one GRPO step, video prompts ({args.frames} frames of {args.size}×{args.size}): "
                "encode once per group vs once per completion"
            )
            processor = VideoProcessorConfig(
                num_frames=args.frames,
                max_frames=args.frames,
                min_pixels=28 * 28,
                max_pixels=args.size * args.size,
            )
            items = prompt_items(
                tokenizer, processor, args.prompts * (args.warmup + args.steps), args.frames, args.size
            )
            grid = items[0].prompt["video_grid_thw"].flatten().tolist()
            print(
                f"video: grid {grid}, {items[0].prompt['pixel_values_videos'].shape[0]} patches, "
                f"{items[0].prompt['num_video_tokens']} video tokens; "
                f"prompt {items[0].prompt['input_ids'].numel()} tokens"
            )
            once = describe("encode once per group (default)", run_ours(model_dir, items, args))
            naive = describe(
                "encode once per completion", run_ours(model_dir, items, args, encode_once=False)
            )
            print(f"speed-up of encoding once: {naive / once:.2f}x (median step time)")


if __name__ == "__main__":
    main()
