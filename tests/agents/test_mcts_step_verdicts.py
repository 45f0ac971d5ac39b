"""The env's step verdicts in the MCTS search (``MCTSConfig.prune_failed_steps``).

A step whose ``info["step_check"]`` fails is pruned when its parent is expanded; a node left
without a live step is dead, never selected again, and backs up the env's format-failure
reward once; an env without step checks grows exactly the tree it grew without pruning.
The scripted engine is ``test_mcts.FakeEngine``; the envs are Countdown (its real checks)
and Countdown subclasses with other verdicts, swapped into the agent after construction.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import pytest
from test_mcts import ENV_KWARGS, PROMPT, TASK, FakeEngine, default_script

from langrl.agents.mcts import (
    MCTSAgent,
    MCTSConfig,
    Node,
    SearchResult,
    TreeSearch,
    iter_nodes,
    softmax,
)
from langrl.envs import step_check_failed
from langrl.envs.countdown import CountdownEnv
from langrl.metrics import TAGS

#: Countdown's dense format-failure reward: what a dead end backs up.
DEAD_END = -1.0

OK_15 = "<step>3 * 5 = 15</step>"  # ok: 3 and 5 are given
OK_14 = "<step>7 * 2 = 14</step>"
UNAVAILABLE = "<step>9 * 9 = 81</step>"  # unavailable_number: no 9
WRONG_SUM = "<step>3 + 5 = 9</step>"  # arith_error


# --- envs and helpers ---


class UncheckedCountdown(CountdownEnv):
    """Countdown whose steps are not checked: every verdict is ``unchecked``."""

    def _check_step(self, task, content, progress):
        return "unchecked", "", progress


class NoVerdictCountdown(CountdownEnv):
    """Countdown whose ``step`` reports no ``step_check`` at all (an env of one's own that
    never heard of step checks)."""

    def step(self, action):
        observation, reward, terminated, truncated, info = super().step(action)
        info.pop("step_check", None)
        info.pop("step_detail", None)
        return observation, reward, terminated, truncated, info


class MadeUpVerdicts(CountdownEnv):
    """Verdicts with names Countdown never uses: a step mentioning ``lost`` fails with
    ``made_up_failure``, one with ``?`` is ``unchecked``, any other is ``ok``."""

    def _check_step(self, task, content, progress):
        if "lost" in content:
            return "made_up_failure", "scripted", progress
        return ("unchecked" if "?" in content else "ok"), "", progress


def make(
    script: Callable[[str], list[str]] = default_script,
    env: type[CountdownEnv] | None = None,
    **config: Any,
) -> tuple[MCTSAgent, FakeEngine]:
    engine = FakeEngine(script)
    agent = MCTSAgent(MCTSConfig(**config), "Countdown-v0", ENV_KWARGS, engine)
    if env is not None:
        # Same task and prompt, other verdicts: one env object serves every search.
        agent.env = env(**ENV_KWARGS)
    return agent, engine


def run(agent: MCTSAgent, task: dict = TASK, timeout: float = 30.0) -> SearchResult:
    """One search, bounded in time: a search that loops on a dead end fails here."""

    async def go() -> SearchResult:
        return await asyncio.wait_for(agent.search(task, seed=3), timeout)

    return asyncio.run(go())


def by_text(node: Node, step: str) -> Node:
    (child,) = [c for c in node.children if c.text == step]
    return child


def expansions_of(engine: FakeEngine, *steps: str) -> int:
    """How many times the engine was asked for the steps after ``steps``."""
    return engine.step_prefixes.count(PROMPT + "".join(steps))


def check_accounting(root: Node) -> None:
    """Every simulation backed up once, dead ends with the dead-end value; pruned steps
    were never visited and are not in the tree."""
    tree = list(iter_nodes(root))
    for node in tree:
        assert node.in_flight == 0
        assert not step_check_failed(node.outcome), node.text
        for pruned in node.pruned:
            assert step_check_failed(pruned.outcome)
            assert pruned.visits == 0 and pruned.prior == 0.0 and pruned not in tree
        if node.children:
            # One visit per expansion (failed ones that were retried included), the rest
            # went on to the children.
            expansions = 1 + node.failed_expansions
            assert node.visits == expansions + sum(c.visits for c in node.children)
            assert node.dead == all(c.dead for c in node.children)
            assert math.isclose(sum(c.prior for c in node.children), 1.0)
        elif node.dead:
            # Its expansion found no valid step; workers that waited on it count too.
            assert node.pruned and node.visits >= 1
            assert node.value_sum == pytest.approx(node.visits * DEAD_END)


def fingerprint(node: Node) -> tuple:
    return (
        node.text,
        node.step_ids,
        node.prior,
        node.visits,
        node.value_sum,
        node.reward,
        node.terminal,
        node.value_estimate,
        node.num_samples,
        node.dead,
        tuple(fingerprint(c) for c in node.children),
    )


# --- the verdict ---


@pytest.mark.parametrize(
    "info, failed",
    [
        ({}, False),  # an answer, or an env without step checks
        ({"step_check": "ok"}, False),
        ({"step_check": "unchecked"}, False),
        ({"step_check": "unavailable_number"}, True),
        ({"step_check": "arith_error"}, True),
        ({"step_check": "anything_else"}, True),
    ],
)
def test_a_step_fails_on_any_verdict_but_ok_and_unchecked(info, failed):
    assert step_check_failed(info) is failed


# --- pruning ---


def root_with_failures(done: str) -> list[str]:
    if not done:
        return [OK_15, UNAVAILABLE, WRONG_SUM, "<answer>3 + 5</answer>"]
    return ["<answer>3 * 5 + 7 + 2</answer>", "<answer>3 * 5 + 7 - 2</answer>"]


@pytest.mark.parametrize("num_workers", [1, 4])
def test_steps_that_fail_the_env_check_are_pruned_and_never_selected(num_workers):
    agent, engine = make(root_with_failures, num_workers=num_workers, iterations_per_worker=6)
    result = run(agent)
    root = result.root
    assert [c.text for c in root.children] == [OK_15, "<answer>3 + 5</answer>"]
    assert [(p.text, p.outcome["step_check"]) for p in root.pruned] == [
        (UNAVAILABLE, "unavailable_number"),
        (WRONG_SUM, "arith_error"),
    ]
    # Never selected: no visit, and the engine was never asked to continue them.
    assert all(p.visits == 0 and not p.children for p in root.pruned)
    assert not any(UNAVAILABLE in s or WRONG_SUM in s for s in engine.step_prefixes)
    assert UNAVAILABLE not in result.trajectory.info["text"]
    assert not root.dead and root.visits == num_workers * 6
    check_accounting(root)


def test_priors_are_renormalised_over_the_live_steps_and_only_those_are_scored():
    scored: list[list[int]] = []

    class Recording(FakeEngine):
        async def score(self, prompt_ids, completions):
            scored.extend(list(c) for c in completions)
            return await super().score(prompt_ids, completions)

    engine = Recording(root_with_failures)
    agent = MCTSAgent(
        MCTSConfig(num_workers=1, iterations_per_worker=1, temperature=0.8), "Countdown-v0",
        ENV_KWARGS, engine,
    )  # fmt: skip
    root = run(agent).root
    live = [c.step_ids for c in root.children]
    assert scored == live  # the pruned steps cost no scoring pass
    n = len(engine.tokenizer(PROMPT)["input_ids"])
    logits = [sum(engine.raw_lp(n, j, t) for j, t in enumerate(ids)) for ids in live]
    assert [c.prior for c in root.children] == pytest.approx(softmax(logits))


def test_any_env_verdict_counts_not_only_countdowns():
    steps = ["<step>lost 1</step>", "<step>what now?</step>", "<step>fine</step>"]

    def script(done: str) -> list[str]:
        return steps if not done else ["<answer>3 * 7 + 5 - 2</answer>"]

    agent, _ = make(script, MadeUpVerdicts, num_workers=2, iterations_per_worker=3)
    root = run(agent).root
    assert [c.text for c in root.children] == steps[1:]
    assert [p.outcome["step_check"] for p in root.pruned] == ["made_up_failure"]
    check_accounting(root)


# --- dead ends ---


def one_dead_branch(done: str) -> list[str]:
    """``3 * 5 = 15`` leads to no valid step; ``7 * 2 = 14`` leads on."""
    if not done:
        return [OK_15, OK_14]
    if done == OK_15:
        return ["<step>15 * 9 = 135</step>", "<step>15 + 7 = 23</step>"]  # no 9; 22
    if done == OK_14:
        return ["<step>14 + 3 = 17</step>", "<answer>7 * 2 + 3 + 5</answer>"]
    return ["<answer>7 * 2 + 3 + 5</answer>"]


@pytest.mark.parametrize("num_workers", [1, 4])
def test_a_node_whose_steps_all_fail_is_dead_and_its_parent_stops_selecting_it(num_workers):
    agent, engine = make(
        one_dead_branch, num_workers=num_workers, iterations_per_worker=12 // num_workers,
        value_head=False,
    )  # fmt: skip
    root = run(agent).root
    dead, live = by_text(root, OK_15), by_text(root, OK_14)
    assert dead.dead and not dead.children and len(dead.pruned) == 2
    assert not live.dead and not root.dead
    # Expanded once; besides that simulation, at most the workers that waited on it
    # visited it; every other simulation went to the live branch.
    assert expansions_of(engine, OK_15) == 1
    assert 1 <= dead.visits <= num_workers
    assert dead.value_sum == dead.visits * DEAD_END  # the parent's Q shows the dead end
    assert live.visits == root.visits - 1 - dead.visits > dead.visits
    assert root.visits == 12
    check_accounting(root)


def dead_or_malformed(done: str) -> list[str]:
    """``3 * 5 = 15`` is a dead end; ``7 * 2 = 14`` only leads to a malformed step (-1)."""
    if not done:
        return [OK_15, OK_14]
    return ["<step>15 * 9 = 135</step>"] if done == OK_15 else ["<step>oops"]


def test_a_dead_node_is_not_selected_even_where_pucts_would_pick_it():
    # Both branches are worth -1, so the dead one's exploration bonus (one visit against
    # ever more on its sibling) would win pUCT within a few simulations; it must not.
    agent, engine = make(dead_or_malformed, num_workers=1, iterations_per_worker=24)
    root = run(agent).root
    dead, live = by_text(root, OK_15), by_text(root, OK_14)
    assert dead.dead and dead.visits == 1 and expansions_of(engine, OK_15) == 1
    assert live.visits == 22 and root.visits == 24
    check_accounting(root)


def dead_grandchild(done: str) -> list[str]:
    """Below ``3 * 5 = 15`` one valid step, below which nothing is valid; ``7 * 2 = 14``
    ends in a wrong answer, so the search prefers the other branch until it dies."""
    if not done:
        return [OK_15, OK_14]
    if done == OK_15:
        return ["<step>15 + 7 = 22</step>"]
    if done == OK_15 + "<step>15 + 7 = 22</step>":
        return ["<step>22 * 9 = 198</step>", "<step>22 + 2 = 25</step>"]
    return ["<answer>3 + 5</answer>"]


def test_death_propagates_to_a_parent_whose_children_all_died():
    agent, engine = make(dead_grandchild, num_workers=1, iterations_per_worker=10)
    root = run(agent).root
    parent = by_text(root, OK_15)
    (child,) = parent.children
    assert child.dead and parent.dead and not root.dead
    assert len(child.pruned) == 2 and not parent.pruned  # dead by its child, not by pruning
    assert expansions_of(engine, OK_15) == 1
    assert expansions_of(engine, OK_15, "<step>15 + 7 = 22</step>") == 1
    assert parent.visits == 2 and child.visits == 1  # frozen once dead
    assert by_text(root, OK_14).visits == root.visits - 1 - parent.visits
    check_accounting(root)


def all_fail(done: str) -> list[str]:
    return [UNAVAILABLE, WRONG_SUM]


def dead_below_one_step(done: str) -> list[str]:
    return [OK_15] if not done else ["<step>15 * 9 = 135</step>", "<step>15 + 7 = 23</step>"]


@pytest.mark.parametrize(
    "script, expansions, pruned_frac",
    [(all_fail, 1, 1.0), (dead_below_one_step, 2, 2 / 3)],
    ids=["root-dead", "root-dies-from-below"],
)
@pytest.mark.parametrize("value_head", [True, False])
def test_the_search_ends_within_its_budget_when_every_step_fails(
    script, expansions, pruned_frac, value_head
):
    agent, engine = make(script, num_workers=4, iterations_per_worker=25, value_head=value_head)
    result = run(agent, timeout=10.0)  # a loop on the dead root would time out
    root = result.root
    assert root.dead
    assert len(engine.step_prefixes) == expansions  # no node expanded twice
    # Each simulation that reached a dead end counted once (the expansion's, and those of
    # the workers that waited on it); then the workers stop instead of spending the budget.
    assert 1 <= root.visits <= 2 * 4 < 4 * 25
    # Nothing valid in the tree: the trajectory is the policy's own finishing sample.
    assert result.trajectory.info["finished_by_sampling"]
    assert len(engine.finish_calls) == 1
    assert result.stats["pruned_frac"] == pytest.approx(pruned_frac)
    check_accounting(root)


def test_extraction_prefers_a_live_child_to_a_more_visited_dead_one():
    agent, _ = make(num_workers=1, iterations_per_worker=1)
    search = TreeSearch(agent, TASK, seed=0)
    root = search.root
    answer = "<answer>3 * 7 + 5 - 2</answer>"
    ids = [ord(c) for c in answer]
    dead = Node(state=root.state, parent=root, text=OK_15, visits=5, value_sum=-5.0, dead=True)
    end = Node(state=root.state, parent=root, step_ids=ids, step_logprobs=[-0.1] * len(ids))
    end.text, end.visits, end.value_sum, end.terminal, end.reward = answer, 1, 1.0, True, 1.0
    end.outcome = {"reason": "correct", "is_correct": True}
    root.children = [dead, end]
    trajectory, _, last = asyncio.run(search._extract())
    assert last is end and trajectory.reward == 1.0


# --- envs without step checks ---


CONFIGS = [
    {"num_workers": 1, "iterations_per_worker": 12},
    {"num_workers": 4, "iterations_per_worker": 6},
    {"num_workers": 3, "iterations_per_worker": 5, "value_head": False},
    {"num_workers": 4, "iterations_per_worker": 6, "priors": "sampling",
     "root_noise_fraction": 0.25},
    {"num_workers": 4, "iterations_per_worker": 6, "distill": "best_end"},
    {"num_workers": 4, "iterations_per_worker": 6, "distill": "solutions", "max_solutions": 3},
]  # fmt: skip


def search_record(agent: MCTSAgent, engine: FakeEngine) -> tuple:
    result = run(agent)
    stats = {k: v for k, v in result.stats.items() if not k.endswith("_time_s")}
    stats.pop("pruned_frac", None)
    emitted = [(t.completion_ids, t.behaviour_logprobs, t.reward) for t in result.emitted]
    calls = (engine.step_prefixes, [text for text, _ in engine.finish_calls], engine.score_calls)
    return fingerprint(result.root), emitted, stats, calls


@pytest.mark.parametrize("env", [UncheckedCountdown, NoVerdictCountdown])
@pytest.mark.parametrize("config", CONFIGS)
def test_an_env_without_step_checks_searches_exactly_as_without_pruning(env, config):
    # default_script's "15 + 7 = 22" after "7 * 2 = 14" fails Countdown's own check, so
    # pruning does change the tree where the env checks steps (not a vacuous comparison).
    assert search_record(*make(env=None, **config)) != search_record(
        *make(env=None, prune_failed_steps=False, **config)
    )
    pruned = make(env=env, **config)
    assert search_record(*pruned) == search_record(
        *make(env=env, prune_failed_steps=False, **config)
    )
    assert run(pruned[0]).stats["pruned_frac"] == 0.0
    assert not any(n.pruned or n.dead for n in iter_nodes(run(pruned[0]).root))


# --- the statistic ---


def answers_and_failures(done: str) -> list[str]:
    # Only the root is expanded (every valid child is an answer): 2 of 4 distinct pruned.
    return ["<answer>3 * 7 + 5 - 2</answer>", UNAVAILABLE, "<answer>3 + 5</answer>", WRONG_SUM]


def test_pruned_frac_is_reported_as_a_documented_search_metric():
    agent, _ = make(answers_and_failures, num_workers=2, iterations_per_worker=3)
    batch = asyncio.run(agent.collect([TASK, TASK]))
    assert batch.metrics["search/pruned_frac"] == 0.5
    assert "search/pruned_frac" in TAGS and set(batch.metrics) <= set(TAGS)
    # Without pruning there is nothing to report (the steps are children like any other).
    agent, _ = make(answers_and_failures, num_workers=2, iterations_per_worker=3,
                    prune_failed_steps=False)  # fmt: skip
    batch = asyncio.run(agent.collect([TASK, TASK]))
    assert "search/pruned_frac" not in batch.metrics


# --- expansion retries: a node whose K steps all failed is sampled again ---


def fails_first(times: int) -> Callable[[str], list[str]]:
    """The root's first ``times`` expansions sample only failing steps, later ones OK_15;
    below OK_15, a correct answer."""
    calls = {"root": 0}

    def script(done: str) -> list[str]:
        if done:
            return ["<answer>3 * 5 + 7 + 2</answer>"]
        calls["root"] += 1
        return [UNAVAILABLE, WRONG_SUM] if calls["root"] <= times else [OK_15]

    return script


@pytest.mark.parametrize("num_workers", [1, 4])
def test_a_failed_expansion_is_retried_before_the_node_is_dead(num_workers):
    agent, engine = make(fails_first(2), num_workers=num_workers, iterations_per_worker=4,
                         expansion_retries=2)  # fmt: skip
    result = run(agent)
    root = result.root
    assert not root.dead and root.failed_expansions == 2
    assert [c.text for c in root.children] == [OK_15]
    assert [p.text for p in root.pruned] == [UNAVAILABLE, WRONG_SUM] * 2  # both tries kept
    assert (
        result.trajectory.info["is_correct"] and not result.trajectory.info["finished_by_sampling"]
    )
    assert expansions_of(engine, "") == 3
    # Each failed expansion was one simulation backing up the dead-end value.
    assert root.value_sum <= 2 * DEAD_END + (root.visits - 2) * 1.0
    check_accounting(root)


def test_retries_run_out_and_the_node_dies():
    agent, engine = make(fails_first(5), num_workers=2, iterations_per_worker=4,
                         expansion_retries=1)  # fmt: skip
    result = run(agent)
    assert result.root.dead and result.root.failed_expansions == 2
    assert expansions_of(engine, "") == 2 and result.trajectory.info["finished_by_sampling"]
    # Without retries (the default) the first failed expansion kills it, as before.
    agent, engine = make(fails_first(5), num_workers=2, iterations_per_worker=4)
    assert run(agent).root.dead and expansions_of(engine, "") == 1
    with pytest.raises(ValueError, match="expansion_retries"):
        MCTSConfig(expansion_retries=-1)
