"""Per-task sampling seeds (``task_seeds``): what a training run's seeded tasks do to the
built-in agents' engine requests. A task's requests depend on its seed (and the agent's
``seed``) only: not on how many rollouts came before (a resumed run starts counting
again) nor on which other tasks share the rollout. The seed never reaches the env."""

from __future__ import annotations

import asyncio

from sampling_fakes import CORRECT_A, PROMPT_A, PROMPT_B, TASK_A, TASK_B, WRONG_A, ScriptedEngine
from test_mcts import TASK as MCTS_TASK
from test_mcts import FakeEngine, make_agent

from langrl.agents.base import TASK_SEED_KEY, derive_seed, request_seed_base, split_task_seed
from langrl.agents.best_of_n import BestOfNAgent, BestOfNConfig
from langrl.agents.cispo import CISPOAgent, CISPOConfig


def _seeded(task: dict, seed: int) -> dict:
    return {**task, TASK_SEED_KEY: seed}


def test_derive_seed_is_a_stable_31_bit_hash():
    seeds = {derive_seed(s, e, p) for s in range(3) for e in range(3) for p in range(50)}
    assert len(seeds) == 3 * 3 * 50  # no collisions on a small grid
    assert all(0 <= s < 2**31 for s in seeds)
    assert derive_seed(-1, 2) != derive_seed(1, 2)
    # Pinned: the same on every machine and Python (not the salted built-in hash).
    assert derive_seed(0, 0, 0) == 2134987051
    options, seed = split_task_seed({"index": 3, TASK_SEED_KEY: 7})
    assert options == {"index": 3} and seed == 7
    assert split_task_seed({"index": 3}) == ({"index": 3}, None)
    assert request_seed_base(None, 7) == 7
    assert request_seed_base(5, 7) == derive_seed(5, 7)
    assert request_seed_base(5, None) is None and request_seed_base(None, None) is None


def _request_seeds(agent_cls, config, tasks_per_call):
    engine = ScriptedEngine({PROMPT_A: [CORRECT_A, WRONG_A], PROMPT_B: [WRONG_A]})
    agent = agent_cls(config, "Countdown-v0", {}, engine)
    for tasks in tasks_per_call:
        asyncio.run(agent.collect(tasks))
    return [(text, s.seed) for text, s in engine.requests]


def test_sampling_agents_seed_each_request_from_its_task_alone():
    a, b = _seeded(TASK_A, 11), _seeded(TASK_B, 12)
    for agent_cls, config in ((CISPOAgent, CISPOConfig(group_size=2)), (BestOfNAgent, BestOfNConfig(n=2))):  # fmt: skip
        # The same task seed gives the same request seed on any call, alone or batched.
        seeds = _request_seeds(agent_cls, config, [[a, b], [b], [a]])
        assert seeds == [(PROMPT_A, 11), (PROMPT_B, 12), (PROMPT_B, 12), (PROMPT_A, 11)]
        # The agent's own seed is mixed in.
        config.seed = 5
        seeds = _request_seeds(agent_cls, config, [[a], [a]])
        assert seeds == [(PROMPT_A, derive_seed(5, 11))] * 2
        # Without task seeds: the agent's per-call scheme (calls differ), as before.
        seeds = _request_seeds(agent_cls, config, [[TASK_A], [TASK_A]])
        assert seeds[0][1] is not None and seeds[0][1] != seeds[1][1]
        config.seed = None
        assert _request_seeds(agent_cls, config, [[TASK_A]]) == [(PROMPT_A, None)]


def test_trajectories_record_the_env_task_without_the_seed():
    engine = ScriptedEngine({PROMPT_A: [CORRECT_A, WRONG_A]})
    agent = CISPOAgent(CISPOConfig(group_size=2), "Countdown-v0", {}, engine)
    batch = asyncio.run(agent.collect([_seeded(TASK_A, 3)]))
    assert batch.trajectories
    assert all(t.info["task"] == TASK_A for t in batch.trajectories)


class RecordingEngine(FakeEngine):
    def __init__(self) -> None:
        super().__init__()
        self.seeds: list[int | None] = []

    async def generate(self, prompt, sampling):
        self.seeds.append(sampling.seed)
        return await super().generate(prompt, sampling)


def _mcts_seeds(task, **config) -> list[int | None]:
    engine = RecordingEngine()
    agent, _ = make_agent(engine, num_workers=1, iterations_per_worker=3, **config)
    asyncio.run(agent.collect([task]))
    return engine.seeds


def test_mcts_seeds_each_search_from_its_task():
    first = _mcts_seeds(_seeded(MCTS_TASK, 21))
    assert first and all(s is not None for s in first)
    assert _mcts_seeds(_seeded(MCTS_TASK, 21)) == first  # a fresh agent: no counter to replay
    assert _mcts_seeds(_seeded(MCTS_TASK, 22)) != first
    assert _mcts_seeds(_seeded(MCTS_TASK, 21), seed=4) not in (first, _mcts_seeds(MCTS_TASK))
    assert set(_mcts_seeds(MCTS_TASK)) == {None}  # no seed anywhere: the engine's RNG
    agent, _ = make_agent(num_workers=1, iterations_per_worker=1)
    assert agent.task_seeds
