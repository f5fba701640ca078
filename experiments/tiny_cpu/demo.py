"""`make demo`: the whole method on a CPU, end to end, with a table and plots at the end.

    python experiments/tiny_cpu/demo.py                          # = make demo; writes runs/demo/
    python experiments/tiny_cpu/demo.py --out runs/demo2 seeds=[0] sft.steps=300   # demo.yaml overrides
    python experiments/tiny_cpu/demo.py --config experiments/tiny_cpu/smoke.yaml --out /tmp/smoke
    python experiments/tiny_cpu/demo.py --out runs/demo-qwen3vl model.family=qwen3_vl   # a tiny Qwen3-VL

Stages, each one of the project's own commands (so the demo is exactly what a user would type):
synthetic data with traces on a small part (`vt-data synth`, `vt-data shard --select`) → a random tiny
Qwen2.5-VL, or another family's with `model.family` (`vt-model tiny --family`) → SFT on the traced
part (`vt-sft experiment=tiny_cpu`) → per seed, three variants side by side for the same wall time: GRPO
on the answer-only part (`vt-grpo experiment=tiny_cpu_grpo`), the same GRPO with the clue reward
(`vt-grpo experiment=ablations/tiny_cpu_clue_reward`) and continued SFT on the traced part (the control) →
`vt-eval` of the base, SFT and every trained model, faithfulness included → the stage table, the
faithfulness table per question type and the plots (`vt_eval.stages`). Output:
<out>/report/{table.md,summary.json,faithfulness.csv,plots/}.

Rerunning the same command skips finished stages (a marker per stage under <out>/stages/), and the
training commands resume from their checkpoints, so an interrupted demo continues where it stopped.
A failed stage stops the demo and prints the end of its log (<out>/logs/<stage>.log).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BIN = Path(sys.executable).parent  # the venv's console scripts sit beside its python
# The models trained from SFT, per seed, side by side: (stage kind, label in the report).
# How the report's title names the tiny model's family (model.family); other families by their name.
FAMILY_LABELS = {"qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL"}
VARIANTS = (("grpo", "SFT + GRPO"), ("grpo_clue", "SFT + GRPO + clue reward"),
            ("control", "SFT + more SFT (control)"))


@dataclass
class Stage:
    """One step of the pipeline: commands run in order; done once its marker exists."""

    name: str
    commands: list[list[str]]
    threads: int
    info: dict = field(default_factory=dict)


def tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


class Pipeline:
    """Runs stages as subprocesses with per-stage logs, markers and timings; prints progress."""

    def __init__(self, out: Path, total: int) -> None:
        self.out, self.total, self.finished = out, total, 0
        (out / "logs").mkdir(parents=True, exist_ok=True)
        (out / "stages").mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()

    def marker(self, stage: Stage) -> Path:
        return self.out / "stages" / f"{stage.name}.json"

    def done(self, stage: Stage) -> dict | None:
        path = self.marker(stage)
        return json.loads(path.read_text()) if path.is_file() else None

    def _env(self, threads: int) -> dict[str, str]:
        env = dict(os.environ, VT_ROOT=str(ROOT), OMP_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false")
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def run(self, *stages: Stage) -> list[dict]:
        """Run `stages` at the same time (each runs its commands in order); return their records."""
        todo = [s for s in stages if self.done(s) is None]
        for s in stages:
            if s not in todo:
                self._progress(s, self.done(s), skipped=True)
        running = []
        for s in todo:
            running.append((s, self._start(s, 0), time.monotonic(), 0))
        while running:
            time.sleep(0.5)
            still = []
            for s, proc, t0, index in running:
                code = proc.poll()
                if code is None:
                    still.append((s, proc, t0, index))
                    continue
                proc.log_handle.close()
                if code != 0:
                    for _, p, _, _ in running:
                        if p.poll() is None:
                            p.terminate()
                    self._fail(s, code)
                if index + 1 < len(s.commands):
                    still.append((s, self._start(s, index + 1), t0, index + 1))
                    continue
                record = {"stage": s.name, "seconds": round(time.monotonic() - t0, 1), **s.info}
                self.marker(s).write_text(json.dumps(record, indent=1) + "\n")
                self._progress(s, record)
            running = still
        return [self.done(s) for s in stages]

    def _start(self, stage: Stage, index: int) -> subprocess.Popen:
        log = self.out / "logs" / f"{stage.name}.log"
        handle = open(log, "a", encoding="utf-8")
        handle.write(f"$ {' '.join(stage.commands[index])}\n")
        handle.flush()
        proc = subprocess.Popen(stage.commands[index], stdout=handle, stderr=subprocess.STDOUT,
                                env=self._env(stage.threads), cwd=ROOT)
        proc.log_handle = handle
        return proc

    def _fail(self, stage: Stage, code: int) -> None:
        log = self.out / "logs" / f"{stage.name}.log"
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        sys.stderr.write(f"\n{tail}\n")
        raise SystemExit(f"demo: stage {stage.name!r} failed (exit {code}); full log: {log}")

    def _progress(self, stage: Stage, record: dict | None, skipped: bool = False) -> None:
        self.finished += 1
        elapsed = time.monotonic() - self.started
        what = "done before" if skipped else f"{record['seconds']:.0f} s"
        print(f"[{self.finished:2d}/{self.total}] {elapsed / 60:5.1f} min  {stage.name:<22} {what}",
              flush=True)


def build_stages(cfg, out: Path) -> dict[str, Stage]:
    """Every stage of the demo, by name, from the pipeline config."""
    data, shards, model = out / "data", out / "shards", out / "model"
    solo = int(cfg.threads)
    shared = max(1, int(cfg.threads) // int(cfg.parallel))
    side_by_side = max(1, int(cfg.threads) // len(VARIANTS))
    # the model family (vt_model.families) of the tiny model, and of every stage's video preprocessing
    common = [f"paths.log_dir={out}", "model.prepare=null", "data.prepare=null",
              f"model.family={cfg.model.family}"]
    stages: dict[str, Stage] = {}

    synth = [tool("vt-data"), "synth", "--out", str(data), "--seed", str(cfg.data.seed), "--quiet",
             "--num-train-clips", str(cfg.data.train_clips), "--num-test-clips", str(cfg.data.test_clips),
             "--num-segments", ",".join(str(n) for n in cfg.data.num_segments),
             "--seconds-per-segment", str(cfg.data.seconds_per_segment),
             "--question-types", ",".join(cfg.data.question_types),
             "--traced-types", ",".join(cfg.data.traced_types),
             "--traced-fraction", str(cfg.data.traced_fraction)]
    shard = [tool("vt-data"), "shard", str(data / "train.jsonl"), "--video-root", str(data), "--quiet"]
    stages["data"] = Stage("data", [synth, [*shard, "--select", "traced", "--out", str(shards / "sft")],
                                    [*shard, "--select", "answer-only", "--out", str(shards / "grpo")]], solo)
    stages["model"] = Stage("model", [[tool("vt-model"), "tiny", str(model),
                                       "--family", str(cfg.model.family), *cfg.model.args]], solo)
    stages["sft"] = Stage("sft", [[
        tool("vt-sft"), "experiment=tiny_cpu", f"hydra.run.dir={out / 'sft'}", *common,
        f"model.path={model}", f"data.train_shards={shards / 'sft'}", f"trainer.max_steps={cfg.sft.steps}",
        *cfg.sft.args]], solo)

    def evaluate(name: str, model_dir: Path, threads: int) -> Stage:
        return Stage(f"eval-{name}", [[
            tool("vt-eval"), "protocol=tiny_cpu", "benchmark=synthetic", f"run_name={name}",
            f"paths.log_dir={out}", f"model.path={model_dir}", "model.prepare=null",
            f"model.family={cfg.model.family}",
            f"benchmark.annotation_path={data / 'test.jsonl'}", "benchmark.prepare=null", *cfg.eval.args]],
            threads, {"eval_dir": str(out / "eval" / name / "tiny_cpu" / "synthetic"),
                      "model_dir": str(model_dir)})

    stages["eval-base"] = evaluate("base", model, shared)
    stages["eval-sft"] = evaluate("sft", out / "sft" / "hf_model", shared)

    def grpo(kind: str, seed: int, run_dir: Path, experiment: str, args: list[str]) -> Stage:
        return Stage(f"{kind}-seed{seed}", [[
            tool("vt-grpo"), f"experiment={experiment}", f"hydra.run.dir={run_dir}", *common,
            f"init_from={out / 'sft' / 'hf_model'}", f"data.train_shards={shards / 'grpo'}", f"seed={seed}",
            "trainer.max_steps=1000000", f"trainer.max_time={cfg.grpo.max_time}", *args]], side_by_side,
            {"train_dir": str(run_dir)})

    for seed in cfg.seeds:
        dirs = {"grpo": out / "grpo" / f"seed{seed}", "grpo_clue": out / "grpo_clue" / f"seed{seed}",
                "control": out / "sft_more" / f"seed{seed}"}
        stages[f"grpo-seed{seed}"] = grpo("grpo", seed, dirs["grpo"], "tiny_cpu_grpo", [*cfg.grpo.args])
        # the clue variant differs from GRPO only by its experiment (reward, span sampling) and its own args
        stages[f"grpo_clue-seed{seed}"] = grpo("grpo_clue", seed, dirs["grpo_clue"], cfg.grpo_clue.experiment,
                                               [*cfg.grpo.args, *cfg.grpo_clue.args])
        stages[f"control-seed{seed}"] = Stage(f"control-seed{seed}", [[
            tool("vt-sft"), "experiment=tiny_cpu", f"hydra.run.dir={dirs['control']}", *common,
            f"model.path={out / 'sft' / 'hf_model'}", f"data.train_shards={shards / 'sft'}", f"seed={seed}",
            f"trainer.max_time={cfg.grpo.max_time}", *cfg.control.args]], side_by_side,
            {"train_dir": str(dirs["control"])})
        for kind, _ in VARIANTS:
            name = f"{kind}-seed{seed}"
            stages[f"eval-{name}"] = evaluate(name, dirs[kind] / "hf_model", shared)
    return stages


def pairs(names: list[str], size: int) -> list[list[str]]:
    return [names[i:i + size] for i in range(0, len(names), size)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "demo"), help="output directory")
    parser.add_argument("--config", action="append", default=[],
                        help="YAML merged over demo.yaml (repeatable), e.g. experiments/tiny_cpu/smoke.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the pipeline config")
    args = parser.parse_args(argv)

    cfg = OmegaConf.merge(OmegaConf.load(HERE / "demo.yaml"), *(OmegaConf.load(p) for p in args.config),
                          OmegaConf.from_dotlist(args.overrides))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.yaml").write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
    stages = build_stages(cfg, out)
    pipeline = Pipeline(out, total=len(stages))
    width = int(cfg.parallel)
    print(f"demo: {len(stages)} stages into {out} ({width} at a time); logs in {out / 'logs'}", flush=True)

    pipeline.run(stages["data"])
    pipeline.run(stages["model"])
    pipeline.run(stages["sft"])
    pipeline.run(stages["eval-base"], stages["eval-sft"])
    for seed in cfg.seeds:  # the variants side by side: the same load, the same wall time
        pipeline.run(*(stages[f"{kind}-seed{seed}"] for kind, _ in VARIANTS))
    evals = [f"eval-{kind}-seed{seed}" for seed in cfg.seeds for kind, _ in VARIANTS]
    for group in pairs(evals, width):
        pipeline.run(*(stages[name] for name in group))

    from vt_eval.stages import StageRun, write_stage_report

    family = str(cfg.model.family)

    def record(name: str) -> dict:
        return pipeline.done(stages[name])

    runs = [StageRun("base", record("eval-base")["eval_dir"], label="base (random init)"),
            StageRun("sft", record("eval-sft")["eval_dir"], train_dir=out / "sft", label="SFT",
                     train_seconds=record("sft")["seconds"])]
    for kind, label in VARIANTS:
        for seed in cfg.seeds:
            train = record(f"{kind}-seed{seed}")
            runs.append(StageRun(kind, record(f"eval-{kind}-seed{seed}")["eval_dir"], seed=int(seed),
                                 train_dir=train["train_dir"], label=label, train_seconds=train["seconds"]))
    report = write_stage_report(runs, out / "report", reference="sft", chance=float(cfg.chance),
                                title=f"make demo: tiny {FAMILY_LABELS.get(family, family)} on the synthetic "
                                      "temporal-QA test split")
    total = time.monotonic() - pipeline.started
    timings = {name: (pipeline.done(stage) or {}).get("seconds") for name, stage in stages.items()}
    (out / "report" / "timings.json").write_text(json.dumps({"total_seconds": round(total, 1), **timings},
                                                            indent=1) + "\n")
    print("\n" + report["table"])
    print(f"\ndemo finished in {total / 60:.1f} min (this invocation); table, plots and summary: "
          f"{out / 'report'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
