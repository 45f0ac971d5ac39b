"""What an MCTS search hands the learner (``MCTSConfig.distill``): the max-visit path, the
path to the best end, or every correct end the tree found; the value-loss default that
goes with it; and the one-line hint for the fields ``distill`` replaced.

Hand-built trees go through ``TreeSearch._extract`` and ``_emitted``; whole searches use
``test_mcts.FakeEngine`` on the real Countdown env.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from test_mcts import TASK, FakeEngine, make_agent

from langrl.agents.mcts import MCTSAgent, MCTSConfig, Node, TreeSearch, best_terminal, iter_nodes
from langrl.training.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_cpu.yaml"

STEP = "<step>3 * 5 = 15</step>"
RIGHT_BELOW = "<answer>3 * 5 + 7 + 2</answer>"  # 24: correct, below STEP
WRONG_BELOW = "<answer>3 * 5 + 7</answer>"  # 22: dense reward 1 - 2 * 2/24
RIGHT = "<answer>3 * 7 + 5 - 2</answer>"  # 24: correct
RIGHT_TOO = "<answer>7 * 3 + 5 - 2</answer>"  # 24: correct
WRONG = "<answer>3 + 5</answer>"  # 8: dense reward -1/3
WRONG_21 = "<answer>3 * 7</answer>"  # 21: dense reward 1 - 2 * 3/24


def _node(engine: FakeEngine, parent: Node, text: str, visits: int, reward: float | None = None):
    """A child of ``parent``; an end of the episode when ``reward`` is given."""
    ids = engine.tokenizer(text)["input_ids"]
    end = reward is not None
    node = Node(state=None, parent=parent, step_ids=ids, step_logprobs=[-0.1] * len(ids),
                text=text, visits=visits, terminal=end, reward=reward or 0.0,
                depth=parent.depth + 1, outcome={"reason": "correct" if reward == 1.0 else
                                                 "wrong_value" if end else "step",
                                                 "is_correct": reward == 1.0})  # fmt: skip
    parent.children.append(node)
    return node


def hand_tree(distill: str, ends: Sequence[tuple[str, int, float]] | None = None, **config):
    """A finished tree: STEP (6 visits; below it RIGHT_BELOW 2 visits, WRONG_BELOW 3), then
    ``ends`` at the root as ``(text, visits, reward)`` (default: RIGHT 1 visit, WRONG 2).
    The max-visit path is STEP + WRONG_BELOW; the best end RIGHT_BELOW (reward 1, more
    visits than RIGHT)."""
    agent, engine = make_agent(distill=distill, **config)
    tree = TreeSearch(agent, TASK, None)
    step = _node(engine, tree.root, STEP, visits=6)
    _node(engine, step, RIGHT_BELOW, visits=2, reward=1.0)
    _node(engine, step, WRONG_BELOW, visits=3, reward=1 - 2 * 2 / 24)
    for text, visits, reward in ((RIGHT, 1, 1.0), (WRONG, 2, -1 / 3)) if ends is None else ends:
        _node(engine, tree.root, text, visits=visits, reward=reward)
    return tree


def distil(tree: TreeSearch) -> tuple[str, list[str]]:
    """The chosen trajectory's text and the texts of what the search emits."""
    trajectory, _, last = asyncio.run(tree._extract())
    return trajectory.info["text"], [t.info["text"] for t in tree._emitted(trajectory, last)]


def steps_only(done: str) -> list[str]:
    """A script whose steps never end the episode: every path is finished by sampling."""
    return ["<step>3 * 7 = 21</step>", "<step>5 - 2 = 3</step>"]


def two_solutions_script(done: str) -> list[str]:
    if done.count("</step>") == 0:
        return [STEP, RIGHT_BELOW, RIGHT, WRONG]
    return [RIGHT_BELOW, WRONG_BELOW]


def many_solutions_script(done: str) -> list[str]:
    """Ten correct ends in a full tree: two at the root, four below each of its two steps."""
    if done.count("</step>") == 0:
        return [STEP, "<step>7 * 2 = 14</step>", RIGHT, RIGHT_TOO]
    return [RIGHT, RIGHT_TOO, "<answer>5 - 2 + 3 * 7</answer>", "<answer>7 * 3 - 2 + 5</answer>"]


# --- each choice on a hand-built tree ---


def test_max_visits_emits_the_most_visited_path_alone():
    chosen, emitted = distil(hand_tree("max_visits"))
    assert chosen == STEP + WRONG_BELOW
    assert emitted == [STEP + WRONG_BELOW]


def test_best_end_emits_the_path_to_the_best_end_alone():
    chosen, emitted = distil(hand_tree("best_end"))
    assert chosen == STEP + RIGHT_BELOW  # reward 1 and more visits than RIGHT
    assert emitted == [STEP + RIGHT_BELOW]
    # Without a correct end: the best one all the same, not the most visited WRONG.
    tree = hand_tree("best_end", ends=[(WRONG, 9, -1 / 3), (WRONG_21, 1, 1 - 2 * 3 / 24)])
    step = tree.root.children[0]
    step.children = [c for c in step.children if c.text != RIGHT_BELOW]
    assert distil(tree) == (STEP + WRONG_BELOW, [STEP + WRONG_BELOW])
    assert distil(hand_tree("max_visits", ends=[(WRONG, 9, -1 / 3)])) == (WRONG, [WRONG])


def test_solutions_emits_every_correct_end_best_first_up_to_max_solutions():
    ends = [(RIGHT, 1, 1.0), (WRONG, 9, -1 / 3), (RIGHT_TOO, 1, 1.0)]
    tree = hand_tree("solutions", ends)
    chosen, emitted = distil(tree)
    # Reward, then visits (RIGHT_BELOW has 2), then tree order (iter_nodes) for the tie.
    tie = [n.text for n in iter_nodes(tree.root) if n.text in (RIGHT, RIGHT_TOO)]
    assert chosen == STEP + RIGHT_BELOW
    assert emitted == [STEP + RIGHT_BELOW, *tie]
    assert best_terminal(tree.root).text == RIGHT_BELOW  # the chosen end is the first one
    assert distil(hand_tree("solutions", ends, max_solutions=2))[1] == emitted[:2]
    assert distil(hand_tree("solutions", ends, max_solutions=1))[1] == emitted[:1]


def test_solutions_emits_nothing_without_a_correct_end():
    tree = hand_tree("solutions", ends=[(WRONG, 2, -1 / 3)])
    step = tree.root.children[0]
    step.children = [c for c in step.children if c.text != RIGHT_BELOW]
    chosen, emitted = distil(tree)
    assert chosen == STEP + WRONG_BELOW  # the best end, for the search statistics
    assert emitted == []


def test_the_emitted_trajectories_are_the_tree_paths():
    tree = hand_tree("solutions")
    trajectory, _, last = asyncio.run(tree._extract())
    emitted = tree._emitted(trajectory, last)
    assert emitted[0] is trajectory  # the chosen end carries the search statistics
    for t in emitted:
        assert t.completion_ids == tree.engine.tokenizer(t.info["text"])["input_ids"]
        assert t.reward == 1.0 and t.info["is_correct"] and t.advantages is None
        assert not t.info["finished_by_sampling"]


# --- whole searches ---


def test_best_end_falls_back_to_the_max_visit_path_without_an_end():
    texts = []
    for distill in ("max_visits", "best_end"):
        agent, engine = make_agent(FakeEngine(steps_only), distill=distill, num_workers=1,
                                   iterations_per_worker=3)  # fmt: skip
        result = asyncio.run(agent.search(TASK, seed=3))
        assert result.trajectory.info["finished_by_sampling"] and len(engine.finish_calls) == 1
        assert result.emitted == [result.trajectory]
        texts.append(result.trajectory.info["text"])
    assert texts[0] == texts[1]


@pytest.mark.parametrize("finish, kept", [(RIGHT, True), (WRONG, False)])
def test_solutions_keeps_a_correct_finishing_sample_of_a_tree_without_an_end(finish, kept):
    # The reproduce preset's old rule (min_reward 1 on the chosen trajectory) kept it too.
    agent, engine = make_agent(FakeEngine(steps_only, finish=finish), distill="solutions",
                               num_workers=1, iterations_per_worker=3)  # fmt: skip
    result = asyncio.run(agent.search(TASK, seed=3))
    assert result.trajectory.info["finished_by_sampling"]
    assert result.emitted == ([result.trajectory] if kept else [])


def test_solutions_distils_every_solution_of_a_search_once():
    config = dict(distill="solutions", num_workers=3, iterations_per_worker=6, max_solutions=50)
    agent, _ = make_agent(FakeEngine(two_solutions_script), **config)
    result = asyncio.run(agent.search(TASK, seed=1))
    solutions = {
        "".join(n.text for n in node.path()[1:])
        for node in iter_nodes(result.root)
        if node.terminal and node.outcome["is_correct"]
    }
    assert len(solutions) == 3  # two at the root, one below its first step
    assert result.emitted[0] is result.trajectory
    assert sorted(t.info["text"] for t in result.emitted) == sorted(solutions)
    assert result.stats["best_minus_chosen"] == 0.0 and result.stats["chosen_reward"] == 1.0
    agent, _ = make_agent(FakeEngine(two_solutions_script), **config)
    batch = asyncio.run(agent.collect([TASK]))
    assert sorted(t.info["text"] for t in batch.trajectories) == sorted(solutions)
    assert batch.metrics["gen/trajectories"] == 3.0


def _old_preset_rule(result) -> list[str]:
    """What the reproduce preset emitted before ``distill`` (extraction best_terminal,
    paths_per_search 8, min_reward 1.0): the chosen path and the next-best distinct ends
    (reward, then visits, then tree order), 8 in all, those with reward >= 1 kept."""
    paths = [(result.trajectory.reward, result.trajectory.info["text"])]
    chosen = best_terminal(result.root)
    if chosen is not None:
        ends = [n for n in iter_nodes(result.root) if n.terminal and n is not chosen]
        ends.sort(key=lambda n: (n.reward, n.visits), reverse=True)
        paths += [(n.reward, "".join(m.text for m in n.path()[1:])) for n in ends[:7]]
    return [text for reward, text in paths if reward >= 1.0]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "script, emitted",
    [(two_solutions_script, 3), (many_solutions_script, 8), (steps_only, 1)],
)
def test_solutions_emits_what_the_reproduce_preset_emitted_before(seed, script, emitted):
    agent, _ = make_agent(FakeEngine(script), distill="solutions", max_solutions=8,
                          num_workers=3, iterations_per_worker=8, value_head=False,
                          priors="sampling")  # fmt: skip
    result = asyncio.run(agent.search(TASK, seed=seed))
    assert [t.info["text"] for t in result.emitted] == _old_preset_rule(result)
    assert len(result.emitted) == emitted  # not vacuous: solutions, the cap, a finished path


# --- config ---


def test_learner_defaults_turn_the_value_loss_off_for_solutions_or_without_the_head():
    defaults = MCTSAgent.learner_defaults
    assert defaults(MCTSConfig()) == {} == defaults(MCTSConfig(distill="best_end"))
    assert defaults(MCTSConfig(distill="solutions")) == {"c_value": 0.0}
    assert defaults(MCTSConfig(value_head=False)) == {"c_value": 0.0}
    # Through the loader: a default, so an explicit c_value still wins.
    assert load_config(TINY, ["--mcts.distill", "solutions"], agent="mcts").learner.c_value == 0
    told = load_config(TINY, {"mcts.distill": "solutions", "learner.c_value": 0.5}, agent="mcts")
    assert told.learner.c_value == 0.5
    assert load_config(TINY, ["--mcts.distill", "best_end"], agent="mcts").learner.c_value == 1


def test_config_checks_distill_and_max_solutions():
    with pytest.raises(ValueError, match="distill must be one of max_visits, best_end, solutions"):
        MCTSConfig(distill="best_terminal")
    with pytest.raises(ValueError, match="max_solutions"):
        MCTSConfig(max_solutions=0)
    assert not {"extraction", "paths_per_search", "min_reward", "advantages"} & set(
        MCTSConfig.__dataclass_fields__
    )


def _config_error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize(
    "key, value",
    [("extraction", "best_terminal"), ("paths_per_search", 8), ("min_reward", 1.0),
     ("advantages", "tree")],
)  # fmt: skip
def test_old_keys_name_distill(key, value, tmp_path):
    hint = f"mcts.{key}: no longer a field of MCTSConfig; '{key}' was folded into 'distill' "
    hint += "(max_visits | best_end | solutions)"
    # A command-line override, an override mapping, and a preset's section.
    assert hint in _config_error(TINY, [f"--mcts.{key}", str(value)], agent="mcts")
    assert hint in _config_error(TINY, {f"mcts.{key}": value}, agent="mcts")
    preset = tmp_path / "old.yaml"
    preset.write_text(f"extends: {TINY}\nmcts: {{{key}: {value}}}\n")
    assert hint in _config_error(preset, agent="mcts")
    # A shared preset's MCTS section is checked when another agent runs, too.
    assert hint in _config_error(preset, agent="cispo")
