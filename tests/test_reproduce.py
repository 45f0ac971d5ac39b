"""scripts/reproduce.py: its preset is valid for every agent, stages resume from what exists,
and the report (table + plot) is computed from evaluation files with paired intervals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from langrl.training.config import load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def reproduce(load_script):
    """A fresh ``scripts/reproduce.py`` module (tests monkeypatch its ``run``)."""
    return load_script("reproduce")


@pytest.mark.parametrize("agent", ["mcts", "cispo", "bon"])
def test_preset_builds_for_every_agent_with_its_budget(agent, tmp_path):
    config = load_config(ROOT / "configs" / "reproduce.yaml", [], agent=agent, model=None)
    # Wall-matched token budgets (26 to 30 min here), a few in-run evaluations each, and
    # the equal-token variant's override reaches every agent.
    budgets = {"mcts": 4_500_000, "cispo": 6_300_000, "bon": 12_000_000}
    assert config.max_gen_tokens == budgets[agent]
    assert 3 <= config.max_gen_tokens // config.eval_every_tokens <= 6
    variant = load_config(
        ROOT / "configs" / "reproduce.yaml",
        ["--max_gen_tokens", "4000000"],
        agent=agent,
        model=None,
    )
    assert variant.max_gen_tokens == 4_000_000
    # The curves are validation scores on held-out train problems, never the test set.
    assert config.eval.split == "train" and config.eval.first_problem == -config.holdout
    # No agent of this preset trains a value head: CISPO has no use for one, and best-of-N
    # and MCTS keep only correct trajectories, where a fitted V = 1 would cancel A = r - V.
    assert config.learner.c_value == 0.0
    if agent == "bon":
        assert config.agent_config.min_reward == 1.0
    if agent == "mcts":  # an untrained head would only cost a forward per expansion
        assert config.agent_config.value_head is False
        # No scoring pass per expansion, and every solution a tree finds is distilled.
        assert config.agent_config.priors == "sampling"
        assert config.agent_config.distill == "solutions"
        assert config.agent_config.max_solutions == 8


def _write_eval(path: Path, correct: list[int], k: int = 4) -> None:
    n = len(correct)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "k": k, "temperature": 0.2, "task_indices": list(range(n)),
        "per_problem_correct": correct,
        "scalars": {"eval/mean_at_k": sum(correct) / (k * n), "eval/mean_at_k_ci95": 0.01,
                    "eval/pass_at_k": sum(c > 0 for c in correct) / n,
                    "eval/format_ok_frac": 0.5, "eval/num_problems": float(n)},
    }))  # fmt: skip


def test_report_writes_table_with_paired_differences_and_a_plot(tmp_path, reproduce):
    _write_eval(tmp_path / "evals" / "start.json", [0, 1, 0, 2, 0, 0])
    _write_eval(tmp_path / "evals" / "cispo.json", [1, 1, 1, 2, 0, 1])  # +1/4 on 4 problems
    (tmp_path / "curves").mkdir()
    with open(tmp_path / "curves" / "cispo.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "gen_tokens_total", "train_wall_s", "k", "mean_at_k", "mean_at_k_ci95"])
        w.writerows([[0, 0, 0, 4, 0.05, 0.01], [10, 300000, 120, 4, 0.07, 0.01]])
    reproduce.report(tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "table.csv")))
    assert [r["policy"] for r in rows] == ["start policy", "CISPO"]
    diff = [1 / 4, 0, 1 / 4, 0, 0, 1 / 4]
    assert float(rows[1]["diff_vs_start"]) == pytest.approx(sum(diff) / 6)
    assert float(rows[1]["diff_ci95"]) > 0
    assert float(rows[1]["gen_tokens"]) == 300000 and float(rows[1]["steps"]) == 10
    assert "| CISPO | 25.00% +- 1.00 | +12.50 +-" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_report_refuses_evaluations_on_other_problems(tmp_path, reproduce):
    _write_eval(tmp_path / "evals" / "start.json", [0, 1, 0])
    _write_eval(tmp_path / "evals" / "bon.json", [0, 1, 0, 1])
    with pytest.raises(SystemExit, match="bon.json"):
        reproduce.report(tmp_path)


def test_stages_resume_from_what_exists(tmp_path, monkeypatch, reproduce):
    calls: list[list[str]] = []
    monkeypatch.setattr(reproduce, "run", lambda cmd: calls.append(cmd) or 1.0)
    args = reproduce.parse_args(
        ["--results", str(tmp_path / "r"), "--runs", str(tmp_path / "runs")]
    )
    out = tmp_path / "r" / "evals" / "start.json"
    reproduce.evaluate(None, out, args)
    assert calls and "--json-out" in calls[0]
    out.write_text("{}")
    reproduce.evaluate(None, out, args)  # exists: skipped
    assert len(calls) == 1

    run_dir = reproduce.train("cispo", args)  # no checkpoint yet: a fresh run
    assert "--resume" not in calls[-1] and (run_dir / "done.json").is_file()
    reproduce.train("cispo", args)  # finished: skipped
    assert len(calls) == 2
    (run_dir / "done.json").unlink()
    ckpt = run_dir / "checkpoints" / "step_00000004"
    ckpt.mkdir(parents=True)
    (ckpt / "learner_state.json").write_text("{}")
    reproduce.train("cispo", args)  # cut off after a checkpoint: resumed
    assert calls[-1][-1] == "--resume"


def test_agents_with_committed_results_are_not_trained_again(tmp_path, monkeypatch, reproduce):
    calls: list[list[str]] = []
    monkeypatch.setattr(reproduce, "run", lambda cmd: calls.append(cmd) or 1.0)
    monkeypatch.setattr(reproduce, "report", lambda results: None)
    results = tmp_path / "r"
    for name in ("evals/start.json", "evals/bon.json", "curves/bon.csv"):
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_text("{}")
    argv = ["--agents", "bon", "--results", str(results), "--runs", str(tmp_path / "runs")]
    assert reproduce.main(argv) == 0
    assert calls == []  # a new session with an earlier session's results: nothing to redo


def test_a_variant_gets_its_own_row_run_dir_and_results(tmp_path, monkeypatch, reproduce):
    calls: list[list[str]] = []
    monkeypatch.setattr(reproduce, "run", lambda cmd: calls.append(cmd) or 1.0)
    args = reproduce.parse_args(["--results", str(tmp_path / "r"), "--runs", str(tmp_path / "runs"),
                                 "--variant", "6M", "--", "--max_gen_tokens", "6000000"])  # fmt: skip
    run_dir = reproduce.train("bon", args)
    assert run_dir.name == "bon@6M"
    assert calls[-1][-2:] == ["--max_gen_tokens", "6000000"]
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--variant", "../escape"])

    _write_eval(tmp_path / "evals" / "start.json", [0, 1, 0, 2])
    _write_eval(tmp_path / "evals" / "bon@6M.json", [1, 1, 1, 2])
    _write_eval(tmp_path / "evals" / "bon.json", [0, 1, 1, 2])
    _write_eval(tmp_path / "evals" / "mcts.json", [0, 1, 0, 2])
    (tmp_path / "curves").mkdir()
    for name in ("bon", "bon@6M"):
        with open(tmp_path / "curves" / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "gen_tokens_total", "train_wall_s", "k", "mean_at_k"])
            w.writerows([[0, 0, 0, 4, 0.05], [10, 300000, 120, 4, 0.07]])
    reproduce.report(tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "table.csv")))
    # Agents in the preset's order, each followed by its variants.
    assert [r["policy"] for r in rows] == [
        "start policy",
        "MCTS-distill",
        "best-of-N",
        "best-of-N (6M)",
    ]
    assert float(rows[3]["diff_vs_start"]) == pytest.approx(2 / 16)
    assert (tmp_path / "curves.png").stat().st_size > 10_000

    _write_eval(tmp_path / "evals" / "nope.json", [0, 1, 0, 2])
    with pytest.raises(SystemExit, match="nope.json"):
        reproduce.report(tmp_path)


def test_plateau_trains_to_early_stopping_and_evaluates_the_best_validation_checkpoint(
    tmp_path, monkeypatch, reproduce
):
    calls: list[list[str]] = []
    monkeypatch.setattr(reproduce, "report", lambda results: None)
    results, runs = tmp_path / "r", tmp_path / "runs"

    def fake_training(cmd: list[str]) -> float:
        calls.append(cmd)
        if "scripts/train_agent.py" in cmd:  # the run's curve: best at step 20 (of 0..50)
            run_dir = Path(cmd[cmd.index("--run_dir") + 1])
            run_dir.mkdir(parents=True)
            with open(run_dir / "eval_history.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["step", "gen_tokens_total", "train_wall_s", "k", "mean_at_k"])
                w.writerows([[0, 0, 0, 4, 0.05], [10, 1e6, 60, 4, 0.06], [20, 2e6, 120, 4, 0.08],
                             [30, 3e6, 180, 4, 0.08], [40, 4e6, 240, 4, 0.07],
                             [50, 5e6, 300, 4, 0.075]])  # fmt: skip
            (run_dir / "checkpoints" / "step_00000020").mkdir(parents=True)
        return 1.0

    monkeypatch.setattr(reproduce, "run", fake_training)
    argv = ["--plateau", "--agents", "cispo", "--results", str(results), "--runs", str(runs),
            "--", "--max_gen_tokens", "5000000"]  # fmt: skip
    assert reproduce.main(argv) == 0
    (train_cmd,) = [c for c in calls if "scripts/train_agent.py" in c]
    assert train_cmd[-6:] == [
        "--max_gen_tokens",
        "100000000",
        "--early_stopping_patience",
        "3",
        "--max_gen_tokens",
        "5000000",
    ]  # fmt: skip  (explicit wins)
    evals = [c[c.index("--json-out") + 1] for c in calls if "scripts/evaluate.py" in c]
    assert [Path(e).name for e in evals] == ["start.json", "cispo.json", "cispo@best-val.json"]
    best = next(c for c in calls if "cispo@best-val.json" in " ".join(c))
    assert best[best.index("--model") + 1] == str(runs / "cispo" / "checkpoints" / "step_00000020")


def test_a_best_validation_row_reports_the_cost_of_its_checkpoint(tmp_path, reproduce):
    _write_eval(tmp_path / "evals" / "start.json", [0, 1, 0, 2])
    _write_eval(tmp_path / "evals" / "bon.json", [1, 1, 0, 2])
    _write_eval(tmp_path / "evals" / "bon@best-val.json", [1, 1, 1, 2])
    (tmp_path / "curves").mkdir()
    with open(tmp_path / "curves" / "bon.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "gen_tokens_total", "train_wall_s", "k", "mean_at_k"])
        w.writerows([[0, 0, 0, 4, 0.05], [10, 2e6, 120, 4, 0.09], [20, 4e6, 240, 4, 0.07]])
    reproduce.report(tmp_path)
    rows = {r["policy"]: r for r in csv.DictReader(open(tmp_path / "table.csv"))}
    assert float(rows["best-of-N"]["gen_tokens"]) == 4e6  # the run's end
    assert float(rows["best-of-N (best-val)"]["gen_tokens"]) == 2e6  # its best validation
    assert float(rows["best-of-N (best-val)"]["steps"]) == 10
