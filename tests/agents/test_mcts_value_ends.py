"""Value training on every end of a tree (``MCTSConfig.value_ends``): the search hands the
learner value-only trajectories to the ends it did not distil (answers with their reward,
pruned steps with the dead-end value), and the training run trains the value head on them
beyond ``batch_size``. The scripted engine is ``test_mcts.FakeEngine`` on real Countdown."""

from __future__ import annotations

import asyncio

import pytest
from test_mcts import TASK
from test_mcts_step_verdicts import DEAD_END, OK_15, UNAVAILABLE, WRONG_SUM, make, run

from langrl.agents.mcts import MCTSAgent, MCTSConfig, iter_nodes
from langrl.metrics import TAGS

RIGHT = "<answer>3 * 5 + 7 + 2</answer>"
WRONG = "<answer>3 * 5 + 7 - 2</answer>"  # 20: dense reward 1 - 2 * 4/24
ROOT_WRONG = "<answer>3 + 5</answer>"


def failures_and_answers(done: str) -> list[str]:
    if not done:
        return [OK_15, UNAVAILABLE, WRONG_SUM, ROOT_WRONG]
    return [RIGHT, WRONG]


def test_value_ends_are_the_other_ends_and_the_pruned_steps_with_their_outcomes():
    agent, _ = make(failures_and_answers, num_workers=2, iterations_per_worker=4,
                    distill="best_end", value_ends=100)  # fmt: skip
    result = run(agent)
    chosen = result.trajectory.info["text"]
    assert chosen == OK_15 + RIGHT  # the best end is distilled, so not a value end
    ends = {t.info["text"]: t for t in result.value_ends}

    def path_text(node) -> str:
        return "".join(n.text for n in node.path()[1:])

    nodes = list(iter_nodes(result.root))
    expected = {path_text(n) for n in nodes if n.terminal} - {chosen}
    expected |= {path_text(p) for n in nodes for p in n.pruned}
    assert set(ends) == expected and len(ends) == len(result.value_ends)  # each end once
    assert {UNAVAILABLE, WRONG_SUM, ROOT_WRONG, OK_15 + WRONG} <= expected  # not vacuous
    for text, trajectory in ends.items():
        assert trajectory.value_only and trajectory.advantages is None
        assert trajectory.prompt_ids == result.trajectory.prompt_ids
        if text in (UNAVAILABLE, WRONG_SUM):
            assert trajectory.reward == DEAD_END and trajectory.info["reason"] == "pruned_step"
        else:
            node = next(n for n in iter_nodes(result.root) if n.terminal and text.endswith(n.text))
            assert trajectory.reward == node.reward and trajectory.info["reason"] != "pruned_step"
    assert not any(t.value_only for t in result.emitted)


def test_value_ends_are_capped_and_drawn_reproducibly():
    def ends(seed: int) -> list[str]:
        agent, _ = make(failures_and_answers, num_workers=1, iterations_per_worker=4,
                        value_ends=2)  # fmt: skip
        result = asyncio.run(agent.search(TASK, seed=seed))
        return [t.info["text"] for t in result.value_ends]

    draws = {tuple(ends(seed)) for seed in range(6)}
    assert all(len(d) == 2 for d in draws)
    assert tuple(ends(3)) in draws and ends(3) == ends(3)  # a seed repeats its draw
    assert len(draws) > 1  # drawn, not always the first two


def test_solutions_leave_every_correct_end_to_the_policy():
    agent, _ = make(failures_and_answers, num_workers=2, iterations_per_worker=4,
                    distill="solutions", value_ends=100)  # fmt: skip
    result = run(agent)
    assert [t.info["text"] for t in result.emitted] == [OK_15 + RIGHT]
    assert all(not t.info["is_correct"] for t in result.value_ends)
    assert result.value_ends


def test_collect_hands_value_ends_apart_from_the_trajectories():
    agent, _ = make(failures_and_answers, num_workers=2, iterations_per_worker=4, value_ends=3)
    batch = asyncio.run(agent.collect([TASK, TASK]))
    assert len(batch.trajectories) == 2 and not any(t.value_only for t in batch.trajectories)
    assert len(batch.value_trajectories) == 6 and all(
        t.value_only for t in batch.value_trajectories
    )
    assert batch.metrics["search/value_ends"] == 3.0
    assert set(batch.metrics) <= set(TAGS)
    agent, _ = make(failures_and_answers, num_workers=2, iterations_per_worker=4)  # default 0
    batch = asyncio.run(agent.collect([TASK]))
    assert batch.value_trajectories == [] and "search/value_ends" not in batch.metrics


def test_value_ends_config():
    with pytest.raises(ValueError, match="value_ends trains the value head"):
        MCTSConfig(value_ends=4, value_head=False)
    with pytest.raises(ValueError, match="value_ends"):
        MCTSConfig(value_ends=-1)
    # With value ends, a solutions run's head sees failures too: its value loss stays on.
    assert MCTSAgent.learner_defaults(MCTSConfig(distill="solutions", value_ends=8)) == {}
    assert MCTSAgent.learner_defaults(MCTSConfig(distill="solutions")) == {"c_value": 0.0}
