"""A prompt longer than the engine's context skips its task; it never fails the rollout."""

from __future__ import annotations

import asyncio

from sampling_fakes import CORRECT_A, MALFORMED, PROMPT_A, TASK_A, WRONG_A, ScriptedEngine

from langrl.agents.best_of_n import BestOfNAgent, BestOfNConfig
from langrl.agents.cispo import CISPOAgent, CISPOConfig
from langrl.agents.evaluation import EvalConfig, evaluate_async

LONG_TASK = {"numbers": [3, 5, 7, 2], "target": 123456789}  # a longer prompt than TASK_A


def engine() -> ScriptedEngine:
    return ScriptedEngine({PROMPT_A: [CORRECT_A, WRONG_A, MALFORMED]}, max_prompt_len=len(PROMPT_A))


def test_cispo_skips_the_task_and_counts_it():
    agent = CISPOAgent(CISPOConfig(group_size=3), "Countdown-v0", {"reward": "dense"}, engine())
    batch = asyncio.run(agent.collect([LONG_TASK, TASK_A]))
    assert len(batch.trajectories) == 3
    assert all(t.info["task"] == TASK_A for t in batch.trajectories)
    assert batch.metrics["gen/skipped_prompts"] == 1.0


def test_best_of_n_skips_the_task_and_counts_it():
    agent = BestOfNAgent(BestOfNConfig(n=3), "Countdown-v0", {"reward": "dense"}, engine())
    batch = asyncio.run(agent.collect([TASK_A, LONG_TASK]))
    assert [t.info["task"] for t in batch.trajectories] == [TASK_A]
    assert batch.trajectories[0].reward == 1.0
    assert batch.metrics["gen/skipped_prompts"] == 1.0


def test_evaluation_scores_a_prompt_that_does_not_fit_as_k_failures():
    config = EvalConfig(k=3, progress=False)
    result = asyncio.run(evaluate_async(engine(), "Countdown-v0", {}, [TASK_A, LONG_TASK], config))
    # TASK_A: 1 of 3 samples correct; LONG_TASK: 0 of 3.
    assert abs(result["eval/mean_at_k"] - (1 / 3) / 2) < 1e-9
    assert result["eval/pass_at_k"] == 0.5


def test_mcts_skips_the_task_and_counts_it():
    from langrl.agents.mcts import MCTSAgent, MCTSConfig

    # Every child of the root answers (terminal), so only root prompts reach the engine.
    fake = ScriptedEngine({PROMPT_A: ["<answer>3 * 7 + 5 - 2</answer>", WRONG_A]})
    fake.max_prompt_len = len(PROMPT_A)  # LONG_TASK's prompt is longer
    config = MCTSConfig(num_workers=4, iterations_per_worker=2, temperature=1.0)
    agent = MCTSAgent(config, "Countdown-v0", {"reward": "dense"}, fake)
    batch = asyncio.run(asyncio.wait_for(agent.collect([LONG_TASK, TASK_A]), timeout=30))
    assert len(batch.trajectories) == 1
    assert batch.trajectories[0].reward == 1.0
    assert batch.metrics["gen/skipped_prompts"] == 1.0


def test_mcts_node_that_fills_the_context_ends_without_an_answer():
    from langrl.agents.mcts import MCTSAgent, MCTSConfig

    # The root fits; its step child's prefix does not, so expanding it hits the limit.
    fake = ScriptedEngine({PROMPT_A: ["<step>3 * 7 = 21</step>", WRONG_A]})
    fake.max_prompt_len = len(PROMPT_A)
    config = MCTSConfig(num_workers=2, iterations_per_worker=4, temperature=1.0)
    agent = MCTSAgent(config, "Countdown-v0", {"reward": "dense"}, fake)
    result = asyncio.run(asyncio.wait_for(agent.search(TASK_A), timeout=30))
    step_child = next(c for c in result.root.children if c.text.startswith("<step>"))
    assert step_child.terminal and not step_child.children
    assert step_child.outcome["reason"] == "context_limit"
    assert step_child.reward == -1.0  # the dense no-answer reward
    assert result.trajectory.reward in (-1.0, -1 / 3)  # WRONG_A scores 1 - 2 * 16/24
