"""Reproduce the seed paper's comparison at toy scale: MCTS-distill, CISPO and best-of-N
trained from the same tiny policy for the same training wall time (a per-agent token budget),
all evaluated on the test set.

    python scripts/reproduce.py                       # every stage; run it again to resume
    python scripts/reproduce.py --agents cispo bon    # only these agents (and the start policy)
    python scripts/reproduce.py --report-only         # rebuild table and plot from what exists

Stages, each skipped when its output already exists (so the table can be built across
sessions; a training run that was cut off continues from its last checkpoint):

1. ``results/evals/start.json``: the starting policy, seeded mean@16 on all 820 test problems.
2. per agent, ``scripts/train_agent.py --config configs/reproduce.yaml --agent X`` in
   ``runs/reproduce/X`` (``--resume`` when it holds a checkpoint). The preset gives each agent
   the budget of generated tokens (``max_gen_tokens``) it generates in the same training wall
   time on 2 CPU cores (an equal-token comparison is a ``--variant``), and evaluates on a held-out slice of the *train* split for the learning curves (hyperparameters
   were chosen on that slice, never on the test set). Its ``eval_history.csv`` is copied to
   ``results/curves/X.csv``.
3. per agent, ``results/evals/X.json``: the final checkpoint, evaluated as in stage 1.
4. ``results/table.md``, ``results/table.csv`` and ``results/curves.png``: mean@16 with its
   95% interval, the paired difference against the start policy with its 95% interval,
   pass@16, format-ok rate, generated tokens, gradient steps and wall time; curves of the
   validation mean@k against generated tokens and against training wall time.

Each stage runs in its own process (one vLLM engine at a time); the small outputs under
``results/`` are meant to be committed.

A *variant* is one more row for an agent trained with settings other than the preset's (a
larger budget, another lr), given after ``--`` and named by ``--variant``; its outputs are
``{agent}@{variant}`` (``results/evals/bon@6M.json``, ``runs/reproduce/bon@6M``), so the
preset's own rows stay as they are::

    python scripts/reproduce.py --agents bon --variant 6M -- --max_gen_tokens 6000000

``--plateau`` trains each agent until its validation stops rising instead: three in-run
evaluations in a row without a new best (``early_stopping_patience 3``, under a 100M-token
ceiling), and evaluates on the test set both the run's last checkpoint (``X.json``) and the
one with the best validation score (``X@best-val.json``; hyperparameters and checkpoints are
chosen on validation only)::

    python scripts/reproduce.py --plateau --results results/plateau --runs runs/plateau
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AGENTS = ("mcts", "cispo", "bon")
LABELS = {"start": "start policy", "mcts": "MCTS-distill", "cispo": "CISPO", "bon": "best-of-N"}
COLORS = {"mcts": "tab:red", "cispo": "tab:blue", "bon": "tab:green"}
VARIANT_SEP = "@"
VARIANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: What ``--plateau`` adds to each training command: the token budget is only a ceiling.
PLATEAU_OVERRIDES = ("--max_gen_tokens", "100000000", "--early_stopping_patience", "3")
#: Suffix of the best-validation checkpoint's test evaluation (``--plateau``).
BEST_VAL = "best-val"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train MCTS-distill, CISPO and best-of-N under matched budgets; table and plot.",
        allow_abbrev=False,
    )
    p.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    p.add_argument("--config", default=str(ROOT / "configs" / "reproduce.yaml"))
    p.add_argument("--results", default=str(ROOT / "results"), help="small outputs (commit)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "reproduce"), help="run dirs")
    p.add_argument("--k", type=int, default=16, help="samples per test problem (paper: 16)")
    p.add_argument("--num-problems", type=int, default=None, help="test problems (all: 820)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of the test evaluations")
    p.add_argument("--report-only", action="store_true", help="only rebuild table and plot")
    p.add_argument("--retrain", action="store_true", help="discard finished runs of --agents")
    p.add_argument("--plateau", action="store_true",
                   help="train to the validation plateau (3 evaluations without a new best); "
                   "also evaluate the best-validation checkpoint")  # fmt: skip
    p.add_argument("--variant", default=None,
                   help="name of a row with other settings (given after --): {agent}@{variant}")  # fmt: skip
    p.add_argument("train_overrides", nargs="*", help="extra --key value for train_agent.py")
    args = p.parse_args(argv)
    if args.variant is not None and not VARIANT.fullmatch(args.variant):
        p.error(f"--variant must match {VARIANT.pattern} (a file-name part), got {args.variant!r}")
    if args.plateau:  # given first, so that explicit overrides after -- still win
        args.train_overrides = [*PLATEAU_OVERRIDES, *args.train_overrides]
    return args


def run_name(agent: str, variant: str | None) -> str:
    """``agent``, or ``agent@variant``: the stem of a row's results and its run dir."""
    return agent if variant is None else f"{agent}{VARIANT_SEP}{variant}"


def split_name(name: str) -> tuple[str, str | None]:
    """Inverse of ``run_name``."""
    agent, _, variant = name.partition(VARIANT_SEP)
    return agent, variant or None


def label(name: str) -> str:
    """Table and legend label of a row (``best-of-N (6M)`` for ``bon@6M``)."""
    agent, variant = split_name(name)
    return LABELS[agent] if variant is None else f"{LABELS[agent]} ({variant})"


def run(cmd: list[str]) -> float:
    """Run a stage's command in its own process; return its wall seconds (raise on failure)."""
    print("+ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - start


def evaluate(model: str | None, out: Path, args: argparse.Namespace) -> None:
    if out.is_file():
        print(f"have {out}", flush=True)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "scripts/evaluate.py", "--k", str(args.k), "--seed", str(args.seed),
           "--json-out", str(out), "--quiet"]  # fmt: skip
    if model is not None:
        cmd += ["--model", model]
    if args.num_problems is not None:
        cmd += ["--num-problems", str(args.num_problems)]
    run(cmd)


def train(agent: str, args: argparse.Namespace) -> Path:
    """Train (or resume) one agent; return its run dir. A ``done.json`` marks a finished run."""
    run_dir = Path(args.runs) / run_name(agent, args.variant)
    done = run_dir / "done.json"
    if args.retrain and run_dir.exists():
        shutil.rmtree(run_dir)
    if done.is_file():
        print(f"have {run_dir} (finished)", flush=True)
        return run_dir
    from langrl.learner import latest_checkpoint

    cmd = [sys.executable, "scripts/train_agent.py", "--config", args.config, "--agent", agent,
           "--run_dir", str(run_dir), *args.train_overrides]  # fmt: skip
    if latest_checkpoint(run_dir / "checkpoints") is not None:
        cmd.append("--resume")
    seconds = run(cmd)
    run_dir.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps({"finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                "last_session_s": seconds}))  # fmt: skip
    return run_dir


def best_row(rows: list[dict[str, float]]) -> dict[str, float]:
    """The first evaluation with the highest validation mean@k of a curve's rows."""
    return max(rows, key=lambda r: r["mean_at_k"])  # max keeps the first of equals


def best_validation_step(curve: Path) -> int:
    """The step of ``best_row`` in ``curve`` (an ``eval_history.csv``)."""
    return int(best_row(read_curve(curve))["step"])


def evaluate_best_validation(agent: str, results: Path, args: argparse.Namespace) -> None:
    """``results/evals/{name}@best-val.json``: the test evaluation of the checkpoint with the
    best validation score (the start policy's own file when no step beat it)."""
    name = run_name(agent, args.variant)
    out = results / "evals" / f"{name}{VARIANT_SEP}{BEST_VAL}.json"
    if out.is_file():
        print(f"have {out}", flush=True)
        return
    step = best_validation_step(results / "curves" / f"{name}.csv")
    if step == 0:
        shutil.copy2(results / "evals" / "start.json", out)
        return
    checkpoint = Path(args.runs) / name / "checkpoints" / f"step_{step:08d}"
    if not checkpoint.is_dir():
        raise SystemExit(f"{checkpoint}: the best validation step has no checkpoint")
    evaluate(str(checkpoint), out, args)


# --- report ---


def read_curve(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [
            {k: float(v) for k, v in row.items() if v not in ("", None) and _is_number(v)}
            for row in csv.DictReader(f)
        ]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def report(results: Path) -> None:
    """Write table.md / table.csv / curves.png from results/evals and results/curves."""
    from langrl.agents.evaluation import paired_diff_ci95

    evals = {}
    for path in sorted((results / "evals").glob("*.json")):
        raw = json.loads(path.read_text())  # scripts/evaluate.py --json-out
        evals[path.stem] = {**raw, **raw["scalars"]}
    if "start" not in evals:
        print("no results/evals/start.json yet: nothing to report", flush=True)
        return
    curves = {p.stem: read_curve(p) for p in sorted((results / "curves").glob("*.csv"))}
    start = evals["start"]
    k = int(start["k"])
    rows = []
    for name in ordered_names(evals):
        ev = evals[name]
        if ev["task_indices"] != start["task_indices"] or int(ev["k"]) != k:
            raise SystemExit(f"results/evals/{name}.json is not on the start policy's problems")
        if name == "start":
            diff, diff_ci = 0.0, 0.0
        else:
            diff, diff_ci = paired_diff_ci95(
                [c / k for c in ev["per_problem_correct"]],
                [c / k for c in start["per_problem_correct"]],
            )
        last = curve_row(name, curves)
        rows.append({
            "policy": label(name),
            "mean_at_k": ev["eval/mean_at_k"],
            "mean_at_k_ci95": ev["eval/mean_at_k_ci95"],
            "diff_vs_start": diff,
            "diff_ci95": diff_ci,
            "pass_at_k": ev["eval/pass_at_k"],
            "format_ok_frac": ev["eval/format_ok_frac"],
            "gen_tokens": last.get("gen_tokens_total", 0.0),
            "steps": last.get("step", 0.0),
            "train_wall_min": last.get("train_wall_s", 0.0) / 60,
        })  # fmt: skip
    with open(results / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    n = int(start["eval/num_problems"])
    lines = [
        f"mean@{k} and pass@{k} on {n} Countdown test problems (T={start.get('temperature', 0.2)}, "
        f"seeded, sparse reward); +- is a 95% interval over problems; the difference is paired "
        "per problem against the start policy.",
        "",
        f"| policy | mean@{k} | vs start | pass@{k} | format ok | generated tokens | "
        "gradient steps | train wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pct = 100.0
        vs = "" if r["policy"] == label("start") else (
            f"{pct * r['diff_vs_start']:+.2f} +- {pct * r['diff_ci95']:.2f}"
        )  # fmt: skip
        tokens = f"{r['gen_tokens'] / 1e6:.2f}M" if r["gen_tokens"] else ""
        steps = f"{r['steps']:.0f}" if r["steps"] else ""
        wall = f"{r['train_wall_min']:.1f} min" if r["train_wall_min"] else ""
        lines.append(
            f"| {r['policy']} | {pct * r['mean_at_k']:.2f}% +- {pct * r['mean_at_k_ci95']:.2f} "
            f"| {vs} | {pct * r['pass_at_k']:.1f}% | {pct * r['format_ok_frac']:.1f}% | "
            f"{tokens} | {steps} | {wall} |"
        )
    (results / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    plot(curves, evals, results / "curves.png")


def curve_row(name: str, curves: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """The curve row a table row's tokens, steps and wall time come from: the run's last
    evaluation, or for ``X@best-val`` the evaluation of X with the best validation score
    (empty when there is no curve)."""
    suffix = VARIANT_SEP + BEST_VAL
    base = name.removesuffix(suffix)
    if base != name and curves.get(base):
        return best_row(curves[base])
    return curves.get(name, [{}])[-1]


def ordered_names(evals: dict) -> list[str]:
    """``start``, then the agents in ``AGENTS`` order, each followed by its variants."""
    unknown = [n for n in evals if n != "start" and split_name(n)[0] not in AGENTS]
    if unknown:
        raise SystemExit(f"results/evals/{unknown[0]}.json: not start or an agent's result")
    rest = sorted((n for n in evals if n != "start"),
                  key=lambda n: (AGENTS.index(split_name(n)[0]), split_name(n)[1] or ""))  # fmt: skip
    return ["start", *rest]


def plot(curves: dict, evals: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    variant_styles: dict[str, int] = {}  # an agent's variants: "--", ":", "-.", in turn
    for name, rows in curves.items():
        agent, variant = split_name(name)
        if agent not in COLORS or not rows:
            continue
        style = "-"
        if variant is not None:
            variant_styles[agent] = variant_styles.get(agent, -1) + 1
            style = ("--", ":", "-.")[variant_styles[agent] % 3]
        mean = [100 * r["mean_at_k"] for r in rows]
        half = [100 * r.get("mean_at_k_ci95", 0.0) for r in rows]
        for ax, x in (
            (axes[0], [r["gen_tokens_total"] / 1e6 for r in rows]),
            (axes[1], [r["train_wall_s"] / 60 for r in rows]),
        ):
            ax.plot(x, mean, style, marker="o", color=COLORS[agent], label=label(name))
            ax.fill_between(x, [m - h for m, h in zip(mean, half, strict=True)],
                            [m + h for m, h in zip(mean, half, strict=True)],
                            color=COLORS[agent], alpha=0.12)  # fmt: skip
    k_val = next((int(r[0]["k"]) for r in curves.values() if r and "k" in r[0]), None)
    ylabel = f"validation mean@{k_val} (%)" if k_val else "validation mean@k (%)"
    axes[0].set(xlabel="generated tokens (millions)", ylabel=ylabel,
                title="held-out train problems vs generated tokens")  # fmt: skip
    axes[1].set(xlabel="training wall time (minutes, 2 CPU cores)", ylabel=ylabel,
                title="held-out train problems vs wall time")  # fmt: skip
    names = ordered_names(evals)
    k = int(evals["start"]["k"])
    means = [100 * evals[n]["eval/mean_at_k"] for n in names]
    errs = [100 * evals[n]["eval/mean_at_k_ci95"] for n in names]
    axes[2].bar([label(n).replace(" (", "\n(") for n in names], means, yerr=errs, capsize=6,
                color=["tab:gray", *[COLORS[split_name(n)[0]] for n in names[1:]]],
                hatch=[None, *["//" if split_name(n)[1] else None for n in names[1:]]])  # fmt: skip
    axes[2].tick_params(axis="x", labelrotation=25, labelsize=9)  # six rows' labels fit
    axes[2].set(ylabel=f"test mean@{k} (%)",
                title=f"test set ({int(evals['start']['eval/num_problems'])} problems), 95% CI")  # fmt: skip
    for ax in axes[:2]:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = Path(args.results)
    if not args.report_only:
        evaluate(None, results / "evals" / "start.json", args)
        for agent in args.agents:
            name = run_name(agent, args.variant)
            curve, final = results / "curves" / f"{name}.csv", results / "evals" / f"{name}.json"
            if args.retrain:
                curve.unlink(missing_ok=True)
                final.unlink(missing_ok=True)
            if curve.is_file() and final.is_file():
                # Committed by an earlier session (its run dir need not exist here).
                print(f"have {curve} and {final}", flush=True)
                continue
            run_dir = train(agent, args)
            curve.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run_dir / "eval_history.csv", curve)
            evaluate(str(run_dir / "checkpoints"), final, args)
        if args.plateau:
            for agent in args.agents:
                evaluate_best_validation(agent, results, args)
    report(results)
    return 0


if __name__ == "__main__":  # vLLM spawns processes: keep the guard
    sys.exit(main())
