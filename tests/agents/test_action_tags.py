"""Agents stop on and split by the env's own action tags, not langrl's ``<step>``/``<answer>``.

``ThinkSum-v0`` (the worked example, ``tests/envs/sum_env.py``) writes steps as
``<think>...</think>`` and the answer as ``<final>...</final>``. With ``<step>``/``<answer>``
hard-coded, every completion below would be one malformed action (reward -1).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sampling_fakes import ScriptedEngine

from langrl.agents.best_of_n import BestOfNAgent, BestOfNConfig
from langrl.agents.cispo import CISPOAgent, CISPOConfig
from langrl.agents.mcts import MCTSAgent, MCTSConfig, iter_nodes
from langrl.engine.base import Generation, Sample, SamplingConfig
from langrl.envs import ActionTags, parse_action

ROOT = Path(__file__).resolve().parents[2]
THINK = ActionTags(step="think", answer="final")
TASK = {"index": 0}  # ThinkSum-v0 train task 0: 13 + 7 + 1 = 21
PROMPT = "Numbers: 13 7 1\nTarget: sum\n"
CORRECT = "<think>13 + 7 = 20</think>\n<think>20 + 1 = 21</think>\n<final>21</final>"
WRONG = "<think>13 + 7 = 20</think>\n<final>20</final>"  # dense: 1 - 2 * 1/21


@pytest.fixture(autouse=True)
def _think_sum_registered(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "envs"))
    import sum_env  # noqa: F401  (registers Sum-v0 and ThinkSum-v0)


class StopHonouringEngine(ScriptedEngine):
    """Continues the scripted completion that extends the text so far, and, as a real
    engine does, cuts it just after the first stop string (kept in the text)."""

    def __init__(self, completions):
        super().__init__({})
        self.completions = list(completions)
        self.stops: list[tuple[str, ...]] = []

    async def generate(self, prompt, sampling: SamplingConfig) -> Generation:
        ids = list(prompt)
        done = self.tokenizer.decode(ids)[len(PROMPT) :]
        self.stops.append(tuple(sampling.stop))
        going_on = [c[len(done) :] for c in self.completions if c.startswith(done)] or [""]
        samples = []
        for i in range(sampling.n):
            text = going_on[i % len(going_on)]
            ends = [text.find(s) + len(s) for s in sampling.stop if s in text]
            text = text[: min(ends)] if ends else text
            tok = [ord(c) for c in text]
            samples.append(Sample(tok, text, [-0.5] * len(tok), -0.5 * len(tok), "stop"))
        await asyncio.sleep(0)
        return Generation(ids, samples, self.policy_version)


def test_mcts_expands_one_env_action_per_child_and_grades_by_the_env_tags():
    engine = StopHonouringEngine([CORRECT, WRONG])
    config = MCTSConfig(num_workers=2, iterations_per_worker=4, num_expansions=2, seed=0)
    agent = MCTSAgent(config, "ThinkSum-v0", {"reward": "dense"}, engine)
    result = asyncio.run(agent.search(TASK))

    assert set(engine.stops) <= {THINK.action_stop, THINK.completion_stop}
    assert THINK.action_stop in engine.stops  # ("</think>", "</final>") per expansion
    children = [n for n in iter_nodes(result.root) if n is not result.root]
    assert children
    for node in children:  # each child is exactly one <think> or <final> action
        assert parse_action(node.text, THINK)[0] in ("step", "answer"), node.text
        if node.terminal:
            assert node.outcome["reason"] in ("correct", "wrong_value")
    # The searched trajectory ends in a graded <final> answer: right or wrong, never malformed.
    traj = result.trajectory
    assert engine.tokenizer.decode(traj.completion_ids) in (CORRECT, WRONG)
    assert traj.reward == pytest.approx(1.0 if traj.info["is_correct"] else 1 - 2 / 21)


def test_mcts_finishes_a_short_path_with_the_env_answer_stop():
    # One simulation: the root's single (merged) child, a <think> step, is not terminal,
    # so extraction finishes it with one whole-completion sample.
    engine = StopHonouringEngine([CORRECT])
    config = MCTSConfig(num_workers=1, iterations_per_worker=1, num_expansions=2)
    agent = MCTSAgent(config, "ThinkSum-v0", {"reward": "dense"}, engine)
    result = asyncio.run(agent.search(TASK))

    assert engine.stops == [THINK.action_stop, THINK.completion_stop]
    assert engine.tokenizer.decode(result.trajectory.completion_ids) == CORRECT
    assert result.trajectory.reward == 1.0


def test_sampling_agents_stop_on_and_split_by_the_env_tags():
    engine = ScriptedEngine({PROMPT: [WRONG, CORRECT + " trailing text is dropped"]})
    best = asyncio.run(BestOfNAgent(BestOfNConfig(n=2), "ThinkSum-v0", {}, engine).collect([TASK]))
    assert [t.reward for t in best.trajectories] == [1.0]

    cispo = CISPOAgent(CISPOConfig(num_prompts=1, group_size=2), "ThinkSum-v0", {}, engine)
    batch = asyncio.run(cispo.collect([TASK]))
    assert [t.reward for t in batch.trajectories] == pytest.approx([1 - 2 / 21, 1.0])

    assert {sampling.stop for _, sampling in engine.requests} == {THINK.completion_stop}
