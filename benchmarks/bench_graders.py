"""Benchmark: langrl's exact answer graders vs ``sympy.parse_expr``, and adversarial worst case.

Run by hand from the repo root::

    .venv/bin/python benchmarks/bench_graders.py            # full run (~10 s)
    .venv/bin/python benchmarks/bench_graders.py --quick    # fewer answers

For Countdown (820 test problems) and GSM8K (1,319 test problems) it builds a realistic mix
of answer strings (correct, wrong value, illegal numbers, unparsable, formatting variants
such as ``$1,000`` or ``3/4``), then measures answers/s for

* the grader function (``countdown.grade_answer`` / ``gsm8k.grade_answer``),
* the full env path (``reset(options=...)`` + ``step("<answer>...</answer>")``),
* ``sympy.parse_expr`` on the same strings (the common alternative; run here only on
  these trusted strings, never on model text; its exceptions are caught and timed too),

and prints the speed ratio. It then steps every case of the shared adversarial corpus
(``langrl.envs.adversarial``) and the adversarial ``<step>`` actions, and prints the
worst-case time (target: under 10 ms), and times the solver on all 820 Countdown test
problems from a cold cache, each solution replayed through the env answer-first and step by
step. The tests (tests/envs/test_envs_adversarial.py, test_envs_countdown.py) assert bounded
work on the same inputs, never a time: these timings are the benchmark's to report.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import warnings

import sympy
from sympy.parsing.sympy_parser import parse_expr

import langrl.envs.countdown as countdown_module
from langrl.envs import CountdownEnv, GSM8KEnv
from langrl.envs.adversarial import CASES, COUNTDOWN_TASK, GSM8K_TASK, MAX_SECONDS
from langrl.envs.countdown import grade_answer as grade_countdown
from langrl.envs.countdown import load_countdown, solution_steps, solve
from langrl.envs.gsm8k import check_step as gsm8k_check_step
from langrl.envs.gsm8k import grade_answer as grade_gsm8k
from langrl.envs.gsm8k import load_gsm8k

#: Adversarial ``<step>`` contents, all under CountdownEnv's 1,024-character action limit so
#: they are really parsed (the same as tests/envs/test_envs_adversarial.py's).
ADVERSARIAL_STEPS = (
    "=" * 1000,
    ("1+" * 30 + "1=") * 15,
    "(" * 990 + "1 + 1 = 2",
    "9" * 990 + " * 9 = 1",
    "1 / 0 = 5 " * 99,
)


def countdown_mix(rng: random.Random, size: int) -> list[tuple[object, str]]:
    """(task, answer) pairs: ~40% correct, 30% wrong value, 15% illegal numbers, 15% junk."""
    tasks = load_countdown("test")
    out = []
    for i in range(size):
        task = tasks[i % len(tasks)]
        a, b, c, d = task.numbers
        expr = solve(task.numbers, task.target) or f"{a} + {b}"
        roll = rng.random()
        if roll < 0.4:
            answer = expr
        elif roll < 0.7:
            answer = rng.choice(
                [f"({a} + {b}) * {c} - {d}", f"{a} * {b} + {c} + {d}", f"{a} - {b} / {c}"]
            )
        elif roll < 0.85:
            answer = rng.choice([f"{a} * {a} + {b}", f"{task.target} + 0", f"{a} + {b} + 100"])
        else:
            answer = rng.choice(
                [f"{a} + ", f"({a} * {b}", f"{a} {b} {c}", "I think it's impossible"]
            )
        out.append((task, answer))
    return out


def gsm8k_mix(rng: random.Random, size: int) -> list[tuple[object, str]]:
    """(task, answer) pairs in the forms models write: bare, $, commas, units, decimals, wrong."""
    tasks = load_gsm8k("test")
    out = []
    for i in range(size):
        task = tasks[i % len(tasks)]
        gold = task.answer.rsplit("####", 1)[1].strip()
        wrong = str(int(task.gold) + rng.randint(1, 9)) if task.gold == int(task.gold) else "1"
        answer = rng.choice(
            [
                gold,
                gold,
                f"${gold}",
                f"{gold} dollars",
                f"{gold}.",
                f"{gold}.00",
                wrong,
                f"{wrong}/2",
                f"The answer is {gold}",
                "unknown",
            ]
        )
        out.append((task, answer))
    return out


def rate(fn, items, repeat: int = 3) -> float:
    """Best-of-``repeat`` items per second of ``fn`` over ``items``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def sympy_parse(answer: str) -> None:
    try:
        parse_expr(answer)
    except Exception:  # noqa: BLE001 - malformed strings raise many exception types
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="500 answers per task instead of 2,000"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = 500 if args.quick else 2000
    rng = random.Random(args.seed)
    warnings.simplefilter("ignore")  # sympy warns on some junk strings

    cd_env, gsm_env = CountdownEnv(split="test"), GSM8KEnv(split="test")

    def cd_env_step(item):
        task, answer = item
        cd_env.reset(options={"numbers": list(task.numbers), "target": task.target})
        cd_env.step(f"<answer>{answer}</answer>")

    def gsm_env_step(item):
        task, answer = item
        gsm_env.reset(options={"question": task.question, "answer": task.answer})
        gsm_env.step(f"<answer>{answer}</answer>")

    rows = []
    for name, items, grader, env_step in (
        (
            "Countdown",
            countdown_mix(rng, size),
            lambda it: grade_countdown(it[1], it[0]),
            cd_env_step,
        ),
        ("GSM8K", gsm8k_mix(rng, size), lambda it: grade_gsm8k(it[1], it[0].gold), gsm_env_step),
    ):
        ours = rate(grader, items)
        via_env = rate(env_step, items)
        theirs = rate(lambda it: sympy_parse(it[1]), items, repeat=1)
        rows.append((name, len(items), ours, via_env, theirs))

    print(f"answers per task: {size}   sympy {sympy.__version__}")
    header = f"{'task':<10} {'answers':>7} {'grader/s':>11} {'env step/s':>11} {'parse_expr/s':>13} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for name, n, ours, via_env, theirs in rows:
        print(
            f"{name:<10} {n:>7} {ours:>11,.0f} {via_env:>11,.0f} {theirs:>13,.0f} {ours / theirs:>6.0f}x"
        )
    print("(ratio = grader/s / parse_expr/s; parse_expr only parses, the grader also checks)")

    # --- adversarial worst case ---
    envs = {"countdown": (CountdownEnv(), COUNTDOWN_TASK), "gsm8k": (GSM8KEnv(), GSM8K_TASK)}
    timings = []  # (median s, max s, label)
    for case in CASES:
        env, task = envs[case.env]
        timings.append((*step_times(env, task, case.action), f"{case.env}/{case.name}"))
    for i, step in enumerate(ADVERSARIAL_STEPS):
        for name, (env, task) in envs.items():
            timings.append((*step_times(env, task, f"<step>{step}</step>"), f"{name}/step{i}"))
        timings.append(
            (*call_times(lambda step=step: gsm8k_check_step(step)), f"gsm8k/check_step{i}")
        )
    worst_median, _, worst_label = max(timings, key=lambda t: t[0])
    worst_max = max(t[1] for t in timings)
    print()
    print(
        f"adversarial corpus: {len(CASES)} cases + {len(ADVERSARIAL_STEPS)} steps; worst "
        f"median step {worst_median * 1e3:.3f} ms ({worst_label}); worst single "
        f"step {worst_max * 1e3:.3f} ms; limit {MAX_SECONDS * 1e3:.0f} ms -> "
        f"{'OK' if worst_max < MAX_SECONDS else 'OVER'}"
    )

    # --- solver: every Countdown test problem, cold cache, replayed through the env ---
    countdown_module._solution.cache_clear()
    countdown_module._search.cache_clear()
    tasks = load_countdown("test")
    start = time.perf_counter()
    for task in tasks:
        solve(task.numbers, task.target)
        solution_steps(task.numbers, task.target)
    solve_s = time.perf_counter() - start
    states = countdown_module._search.cache_info().misses
    env = CountdownEnv(split="test")
    start = time.perf_counter()
    for i, task in enumerate(tasks):
        env.reset(options={"index": i})
        env.step(f"<answer>{solve(task.numbers, task.target)}</answer>")
        env.reset(options={"index": i})
        for action in solution_steps(task.numbers, task.target):
            env.step(action)
    replay_s = time.perf_counter() - start
    print(
        f"solver: {len(tasks)} Countdown test problems in {solve_s:.2f} s from a cold cache "
        f"({states:,} search states); replayed through the env (answer, then steps) in "
        f"{replay_s:.2f} s"
    )


def call_times(fn, repeat: int = 5) -> tuple[float, float]:
    """Median and max seconds of ``fn()`` over ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), max(samples)


def step_times(env, task: dict, action: str, repeat: int = 5) -> tuple[float, float]:
    """Median and max seconds of ``env.step(action)`` on a fresh ``reset(options=task)``."""
    samples = []
    for _ in range(repeat):
        env.reset(options=task)
        start = time.perf_counter()
        env.step(action)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), max(samples)


if __name__ == "__main__":
    main()
