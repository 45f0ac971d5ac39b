"""Unit tests of the MCTS-distill search logic (``langrl.agents.mcts``).

A deterministic fake ``PolicyEngine`` scripts Countdown steps as a function of the
completion so far, with logprobs and values that are pure functions of the ids, so every
number in the tree can be recomputed by hand; the env is the real ``Countdown-v0``. The
fake yields to the event loop inside each call, so concurrent workers really interleave.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence

import gymnasium as gym
import pytest

import langrl  # noqa: F401  (registers the envs)
from langrl.agents.mcts import (
    MCTSAgent,
    MCTSConfig,
    Node,
    TreeSearch,
    backup,
    best_terminal,
    iter_nodes,
    puct_score,
    select_child,
    softmax,
    value_calibration,
)
from langrl.agents.rollout import grade_completion
from langrl.engine.base import Generation, PolicyEngine, Sample, SamplingConfig
from langrl.engine.common import find_stop, stop_overhang
from langrl.metrics import TAGS

TASK = {"numbers": [3, 5, 7, 2], "target": 24}
PROMPT = "Numbers: 3 5 7 2\nTarget: 24\n"
ENV_KWARGS = {"reward": "dense"}


# --- a deterministic fake engine ---


class CharTokenizer:
    """One token per character (``ord``); no chat template."""

    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i) for i in ids)


class MergingTokenizer(CharTokenizer):
    """One token per character, except ``"><"``: one token (id ``MERGED``), as Qwen2's BPE
    merges it in ``</step><step>``, so a stop at ``</step>`` can end inside a token."""

    MERGED = 0x110000  # past the last Unicode code point: no character's id

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        pieces = text.split("><")
        ids = [ord(c) for c in pieces[0]]
        for piece in pieces[1:]:
            ids += [self.MERGED, *(ord(c) for c in piece)]
        return {"input_ids": ids}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join("><" if i == self.MERGED else chr(i) for i in ids)


def default_script(done: str) -> list[str]:
    """Candidate next steps given the completion so far (sample i takes entry i mod len)."""
    depth = done.count("</step>")
    if depth == 0:
        return [
            "<step>3 * 5 = 15</step>",
            "<step>3 * 5 = 15</step>",  # identical to the first: merged
            "<step>7 * 2 = 14</step>",
            "<answer>3 + 5</answer>",  # terminal, wrong: dense reward 1 - 2 * 16/24
        ]
    if depth == 1:
        return [
            "<step>15 + 7 = 22</step>",
            "<answer>3 * 5 + 7</answer>",  # terminal, 22: reward 1 - 2 * 2/24
            "<step>oops",  # cut off by max_tokens: malformed, terminal, reward -1
        ]
    return ["<answer>3 * 5 + 7 + 2</answer>", "<answer>3 * 7 + 5 - 2</answer>"]


class FakeEngine(PolicyEngine):
    """Scripted steps; logprobs and values are pure functions of the ids.

    ``generate`` with a ``</step>`` stop samples ``script(completion so far)``; without one
    (the finishing sample) it returns ``finish``. A scripted string is what the model
    sampled: its ids are all kept and, as in the real engines, its text is cut after the
    first stop string, the rest reported as ``overhang``. Sampling logprob of token ``t`` at
    position ``j`` after a prefix of length ``L``: ``lp(L, j, t)``; ``score`` returns the
    distinct raw value ``raw_lp``; ``values`` is ``value_of(ids)``.
    """

    def __init__(
        self,
        script: Callable[[str], list[str]] = default_script,
        finish: str = "<answer>3 * 7 + 5 - 2</answer>",
        yields: int = 3,
        tokenizer: CharTokenizer | None = None,
    ) -> None:
        self.tokenizer = tokenizer or CharTokenizer()
        self.script = script
        self.finish = finish
        self.yields = yields
        self.policy_version = 7
        self.step_prefixes: list[str] = []
        self.finish_calls: list[tuple[str, SamplingConfig]] = []
        self.score_calls = 0

    @staticmethod
    def lp(prefix_len: int, j: int, token: int) -> float:
        return -(0.05 + 0.01 * ((token * 7 + j + prefix_len) % 11))

    @staticmethod
    def raw_lp(prefix_len: int, j: int, token: int) -> float:
        return 1.1 * FakeEngine.lp(prefix_len, j, token) - 0.01

    @staticmethod
    def value_of(ids: Sequence[int]) -> float:
        return round(0.1 * (sum(ids) % 13) - 0.6, 6)

    async def _yield(self, ids: Sequence[int]) -> None:
        # A prefix-dependent number of loop turns, so workers finish out of order.
        for _ in range(self.yields + len(ids) % 3):
            await asyncio.sleep(0)

    async def generate(self, prompt, sampling: SamplingConfig) -> Generation:
        ids = list(prompt)
        text = self.tokenizer.decode(ids)
        done = text[len(PROMPT) :]
        if "</step>" in sampling.stop:
            self.step_prefixes.append(text)
            texts = self.script(done)
        else:
            self.finish_calls.append((text, sampling))
            texts = [self.finish]
        await self._yield(ids)
        samples = []
        for i in range(sampling.n):
            t = texts[i % len(texts)]
            tok = self.tokenizer(t)["input_ids"]
            lps = [self.lp(len(ids), j, x) for j, x in enumerate(tok)]
            hit = find_stop(t, sampling.stop, 0)
            text, stop = (t, None) if hit is None else (t[: hit[0]], hit[1])
            reason = "stop" if hit is not None or t.endswith(">") else "length"
            overhang = stop_overhang(self.tokenizer, tok, text, stop)
            samples.append(Sample(tok, text, lps, sum(lps), reason, stop, overhang))
        return Generation(ids, samples, self.policy_version)

    async def score(self, prompt_ids, completions):
        self.score_calls += 1
        await self._yield(prompt_ids)
        n = len(prompt_ids)
        return [[self.raw_lp(n, j, x) for j, x in enumerate(c)] for c in completions]

    async def values(self, states):
        await self._yield(states[0])
        return [self.value_of(s) for s in states]

    def load_weights(self, lm_state, value_head_state) -> int:
        self.policy_version += 1
        return self.policy_version

    def shutdown(self) -> None:
        pass


def make_agent(engine: FakeEngine | None = None, **config) -> tuple[MCTSAgent, FakeEngine]:
    engine = engine or FakeEngine()
    return MCTSAgent(MCTSConfig(**config), "Countdown-v0", ENV_KWARGS, engine), engine


def search(agent: MCTSAgent, task=TASK):
    return asyncio.run(agent.search(task))


def env_reward(actions: Sequence[str]) -> float:
    """Reward of the last transition of ``actions`` on a fresh env (independent grader)."""
    env = gym.make("Countdown-v0", **ENV_KWARGS).unwrapped
    env.reset(options=TASK)
    return grade_completion(env, env.get_state(), "".join(actions))[0]


def check_tree_invariants(root: Node, engine: FakeEngine) -> None:
    """Exact accounting after every worker has finished (no virtual loss left)."""
    for node in iter_nodes(root):
        assert node.in_flight == 0
        if node.terminal:
            assert not node.children and node.value_estimate is None
            assert node.value_sum == pytest.approx(node.visits * node.reward)
        elif node.children:
            # One visit for the expansion itself, every other one went through a child.
            assert node.visits == 1 + sum(c.visits for c in node.children)
            ids = [t for n in node.path()[1:] for t in n.step_ids]
            v = engine.value_of(engine.tokenizer(PROMPT)["input_ids"] + ids)
            assert node.value_estimate == v
            assert node.value_sum == pytest.approx(v + sum(c.value_sum for c in node.children))
        else:
            assert node.visits == 0 and node.value_sum == 0


# --- config ---


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_workers", 0),
        ("iterations_per_worker", 1.5),
        ("num_expansions", 0),
        ("c_puct", -1.0),
        ("virtual_loss", -0.5),
        ("first_play_value", 2.0),
        ("root_noise_fraction", 1.0),
        ("root_dirichlet_alpha", 0.0),
        ("temperature", 0.0),
        ("seed", "x"),
        ("distill", "best_terminal"),
        ("priors", "raw"),
        ("max_solutions", 0),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        MCTSConfig(**{field: value})


# --- selection and virtual loss ---


def _star(children: Sequence[tuple[float, int, float]], parent_visits: int) -> Node:
    root = Node(state=None, visits=parent_visits)
    root.children = [
        Node(state=None, parent=root, prior=p, visits=n, value_sum=w) for p, n, w in children
    ]
    return root


def test_puct_picks_the_argmax_of_the_formula():
    # N_parent = 10, c_puct = 0.5, sqrt(10) = 3.1623:
    #   a: P .5, N 4, W 2   -> .5  + .5 * .5 * 3.1623 / 5 = 0.6581
    #   b: P .3, N 0        -> fpv + .5 * .3 * 3.1623 / 1 = fpv + 0.4743
    #   c: P .2, N 5, W 4   -> .8  + .5 * .2 * 3.1623 / 6 = 0.8527
    root = _star([(0.5, 4, 2.0), (0.3, 0, 0.0), (0.2, 5, 4.0)], parent_visits=10)
    a, b, c = root.children
    s = math.sqrt(10)
    assert puct_score(a, root, 0.5, 1.0, 0.0) == pytest.approx(0.5 + 0.25 * s / 5)
    assert puct_score(b, root, 0.5, 1.0, 0.0) == pytest.approx(0.15 * s)
    assert puct_score(c, root, 0.5, 1.0, 0.0) == pytest.approx(0.8 + 0.1 * s / 6)
    assert select_child(root, MCTSConfig(c_puct=0.5, first_play_value=0.0)) is c
    # An optimistic first-play value makes the unvisited child win: 0.5 + 0.4743 > 0.8527.
    assert select_child(root, MCTSConfig(c_puct=0.5, first_play_value=0.5)) is b


def test_virtual_loss_lowers_q_raises_n_and_is_restored_exactly():
    cfg = MCTSConfig(c_puct=0.5, virtual_loss=1.0)
    root = _star([(0.5, 2, 1.2), (0.5, 2, 1.0)], parent_visits=5)
    a, b = root.children
    assert select_child(root, cfg) is a  # Q .6 vs .5, same prior and visits
    # A worker's path through a is in flight.
    root.in_flight += 1
    a.in_flight += 1
    assert a.effective_visits(cfg.virtual_loss) == 3
    assert a.q(cfg.virtual_loss, 0.0) == pytest.approx((1.2 - 1.0) / 3)  # lowered from .6
    assert root.effective_visits(cfg.virtual_loss) == 6
    assert select_child(root, cfg) is b  # the busy branch now looks worse, not better
    backup([root, a], 0.4)
    assert (root.in_flight, root.visits, root.value_sum) == (0, 6, 0.4)
    assert (a.in_flight, a.visits) == (0, 3)
    assert a.value_sum == pytest.approx(1.6)
    assert a.q(cfg.virtual_loss, 0.0) == pytest.approx(1.6 / 3)


def test_unvisited_child_in_flight_reads_as_a_loss():
    root = _star([(0.5, 0, 0.0)], parent_visits=1)
    (a,) = root.children
    a.in_flight = 1
    assert a.q(1.0, first_play_value=0.3) == -1.0
    assert a.q(0.0, first_play_value=0.3) == 0.3  # virtual loss off: first-play value


# --- expansion and backup ---


def test_first_simulation_backs_up_v_once():
    agent, engine = make_agent(num_workers=1, iterations_per_worker=1)
    root = search(agent).root
    v = engine.value_of(engine.tokenizer(PROMPT)["input_ids"])
    assert (root.visits, root.value_sum) == (1, v)  # not W = 2v (the reference's defect)
    assert len(engine.step_prefixes) == 1


def test_new_leaf_has_one_visit_and_its_own_value():
    def steps_only(done: str) -> list[str]:
        return ["<step>3 * 5 = 15</step>", "<step>7 * 2 = 14</step>"]

    agent, engine = make_agent(FakeEngine(steps_only), num_workers=1, iterations_per_worker=2)
    root = search(agent).root
    expanded = [c for c in root.children if c.children]
    assert len(expanded) == 1
    (leaf,) = expanded
    v_leaf = engine.value_of(engine.tokenizer(PROMPT + leaf.text)["input_ids"])
    assert (leaf.visits, leaf.value_sum) == (1, v_leaf)
    assert root.visits == 2
    assert root.value_sum == pytest.approx(root.value_estimate + v_leaf)
    # The first pick is the higher-prior child (every Q is the first-play value).
    assert leaf.prior == max(c.prior for c in root.children)


def test_without_the_value_head_leaves_back_up_first_play_value_and_values_is_never_called():
    class NoValues(FakeEngine):
        async def values(self, states):
            raise AssertionError("values() called with MCTSConfig.value_head=False")

    agent, engine = make_agent(
        NoValues(), num_workers=2, iterations_per_worker=3, value_head=False,
        first_play_value=-0.25,
    )  # fmt: skip
    result = search(agent)
    nodes = list(iter_nodes(result.root))
    assert all(n.value_estimate is None for n in nodes) and result.path_values == []
    for node in nodes:
        if node.children:  # the expansion's own visit backs up first_play_value
            assert node.value_sum == pytest.approx(-0.25 + sum(c.value_sum for c in node.children))
    assert result.root.visits == 6


def test_terminal_children_are_never_expanded_and_back_up_the_env_reward():
    answers = ["<answer>3 * 7 + 5 - 2</answer>", "<answer>3 + 5</answer>", "<step>cut"]
    agent, engine = make_agent(
        FakeEngine(lambda done: answers), num_workers=3, iterations_per_worker=5
    )
    root = search(agent).root
    assert engine.step_prefixes == [PROMPT]  # only the root was ever expanded
    assert [c.terminal for c in root.children] == [True, True, True]
    for child in root.children:
        assert child.reward == pytest.approx(env_reward([child.text]))
        assert child.value_sum == pytest.approx(child.visits * child.reward)
        assert not child.children
    assert [c.reward for c in root.children] == pytest.approx([1.0, 1 - 2 * 16 / 24, -1.0])
    assert root.visits == 15
    check_tree_invariants(root, engine)


def test_identical_completions_merge_into_one_child_with_one_softmax_entry():
    agent, engine = make_agent(num_workers=1, iterations_per_worker=1, temperature=0.8)
    root = search(agent).root
    texts = [c.text for c in root.children]
    assert texts == ["<step>3 * 5 = 15</step>", "<step>7 * 2 = 14</step>", "<answer>3 + 5</answer>"]
    assert [c.num_samples for c in root.children] == [2, 1, 1]
    # Priors: softmax over the distinct children's temperature-1 (scored) sequence logprobs.
    n = len(PROMPT)
    logits = [sum(engine.raw_lp(n, j, t) for j, t in enumerate(c.step_ids)) for c in root.children]
    assert [c.prior for c in root.children] == pytest.approx(softmax(logits))
    assert engine.score_calls == 1

    agent, _ = make_agent(num_workers=1, iterations_per_worker=1, merge_identical=False)
    assert len(search(agent).root.children) == 4


def test_priors_use_the_cumulative_logprob_at_temperature_one():
    agent, engine = make_agent(num_workers=1, iterations_per_worker=1, temperature=1.0)
    root = search(agent).root
    n = len(PROMPT)
    logits = [sum(engine.lp(n, j, t) for j, t in enumerate(c.step_ids)) for c in root.children]
    assert [c.prior for c in root.children] == pytest.approx(softmax(logits))
    assert engine.score_calls == 0


def test_sampling_priors_use_the_sampled_logprobs_and_skip_scoring():
    agent, engine = make_agent(
        num_workers=1, iterations_per_worker=1, temperature=0.8, priors="sampling"
    )
    root = search(agent).root
    n = len(PROMPT)
    logits = [sum(engine.lp(n, j, t) for j, t in enumerate(c.step_ids)) for c in root.children]
    assert [c.prior for c in root.children] == pytest.approx(softmax(logits))
    assert engine.score_calls == 0


def test_root_noise_is_seeded_and_keeps_priors_normalised():
    def priors(seed):
        agent, _ = make_agent(
            num_workers=1, iterations_per_worker=1, root_noise_fraction=0.25, seed=seed
        )
        return [c.prior for c in search(agent).root.children]

    clean = [c.prior for c in search(make_agent(num_workers=1, iterations_per_worker=1)[0]).root.children]  # fmt: skip
    assert sum(priors(1)) == pytest.approx(1.0)
    assert priors(1) == priors(1)
    assert priors(1) != pytest.approx(clean)


# --- concurrency ---


def test_concurrent_workers_never_double_expand_and_account_exactly():
    agent, engine = make_agent(num_workers=8, iterations_per_worker=6, virtual_loss=1.0)
    result = search(agent)
    root = result.root
    # Each prefix was sampled at most once: no node was expanded twice.
    assert len(engine.step_prefixes) == len(set(engine.step_prefixes))
    expanded = [n for n in iter_nodes(root) if n.children]
    assert len(expanded) == len(engine.step_prefixes)
    assert root.visits == 8 * 6
    assert result.stats["collisions"] >= 7  # everyone but the first waited on the root
    check_tree_invariants(root, engine)


def test_virtual_loss_is_visible_to_other_workers_while_in_flight():
    seen = []

    class Probe(FakeEngine):
        root: Node | None = None

        async def generate(self, prompt, sampling):
            # Another worker's request: look at the root's children as it sees them.
            for c in self.root.children:
                seen.append(
                    (c.in_flight, c.visits, c.value_sum, c.effective_visits(1.0), c.q(1.0, 0.0))
                )
            return await super().generate(prompt, sampling)

    engine = Probe()
    agent, _ = make_agent(engine, num_workers=4, iterations_per_worker=3, virtual_loss=1.0)
    tree = TreeSearch(agent, TASK, seed=None)
    engine.root = tree.root
    root = asyncio.run(tree.run()).root
    busy = [s for s in seen if s[0] > 0]
    assert busy, "no in-flight child was observed"
    for n, visits, value_sum, effective_n, q in busy:
        assert effective_n == visits + n  # visits raised by the virtual loss
        assert q == pytest.approx((value_sum - n) / (visits + n))  # value lowered by it
        if visits:
            assert q < value_sum / visits
        else:
            assert q == -1.0
    check_tree_invariants(root, engine)  # and all of it was lifted again


def test_busy_workers_do_not_pile_visits_on_a_bad_terminal():
    # While other paths are in flight, their virtual losses make the root's only free
    # child a wrong answer (reward -1/3). Terminal visits need no engine call, so a free
    # worker must not revisit it in a burst: it waits for an expansion to return.
    agent, engine = make_agent(num_workers=8, iterations_per_worker=25)
    result = search(agent)
    (wrong,) = [c for c in result.root.children if c.terminal]
    assert wrong.reward == pytest.approx(-1 / 3)
    assert wrong.visits < 0.05 * result.root.visits
    assert result.stats["terminal_waits"] > 0
    check_tree_invariants(result.root, engine)


# --- trajectory extraction ---


def _max_visit_path(root: Node) -> list[Node]:
    path, node = [], root
    while node.children:
        node = max(node.children, key=lambda c: (c.visits, c.q(0.0, 0.0), c.prior))
        path.append(node)
    return path


def test_trajectory_follows_max_visits_with_the_sampled_ids_and_logprobs():
    agent, engine = make_agent(num_workers=4, iterations_per_worker=10)
    result = search(agent)
    path = _max_visit_path(result.root)
    assert path[-1].terminal
    traj = result.trajectory
    # Re-derive every id and logprob from the fake engine, step by step along the path.
    prefix = engine.tokenizer(PROMPT)["input_ids"]
    ids, lps = [], []
    for node in path:
        tok = engine.tokenizer(node.text)["input_ids"]
        ids += tok
        lps += [engine.lp(len(prefix), j, t) for j, t in enumerate(tok)]
        prefix = prefix + tok
    assert traj.prompt_ids == engine.tokenizer(PROMPT)["input_ids"]
    assert traj.completion_ids == ids
    assert traj.behaviour_logprobs == lps
    assert traj.reward == pytest.approx(env_reward([n.text for n in path]))
    assert traj.advantages is None
    assert traj.policy_version == 7 and traj.agent == "mcts"
    assert traj.temperature == agent.config.temperature  # the steps' sampling temperature
    assert traj.info["text"] == "".join(n.text for n in path)
    assert not traj.info["finished_by_sampling"] and engine.finish_calls == []


def test_a_short_path_is_finished_by_a_policy_sample():
    def steps_only(done: str) -> list[str]:
        return ["<step>3 * 7 = 21</step>", "<step>5 - 2 = 3</step>"]

    finish = "<step>21 + 3 = 24</step><answer>3 * 7 + 5 - 2</answer>"
    agent, engine = make_agent(
        FakeEngine(steps_only, finish=finish), num_workers=1, iterations_per_worker=1
    )
    result = search(agent)
    traj = result.trajectory
    # One simulation expands only the root: every child is unvisited, so the path is the
    # highest-prior child, which is not terminal and gets finished from its state.
    child = max(result.root.children, key=lambda c: c.prior)
    assert child.visits == 0 and not child.terminal
    assert len(engine.finish_calls) == 1
    prefix_text, sampling = engine.finish_calls[0]
    assert prefix_text == PROMPT + child.text
    assert sampling.n == 1 and "</step>" not in sampling.stop
    tok_step = engine.tokenizer(child.text)["input_ids"]
    tok_finish = engine.tokenizer(finish)["input_ids"]
    n = len(PROMPT)
    assert traj.completion_ids == tok_step + tok_finish
    assert traj.behaviour_logprobs == [engine.lp(n, j, t) for j, t in enumerate(tok_step)] + [
        engine.lp(n + len(tok_step), j, t) for j, t in enumerate(tok_finish)
    ]
    assert traj.reward == pytest.approx(env_reward([child.text, finish])) == 1.0
    assert traj.info["finished_by_sampling"] and traj.info["is_correct"]


# --- BPE merges across a stop string ---

ANSWER = "answer>3 * 7 + 5 - 2</answer>"  # correct; its "<" came with the step before it


def merged_steps(done: str) -> list[str]:
    """Steps as a BPE policy samples them: each ``</step>`` comes merged with the next tag's
    ``<`` (the ``><`` token), so the next sample starts with ``step>`` or ``answer>``."""
    depth = done.count("</step>")
    if depth == 0:
        return ["<step>3 * 7 = 21</step><", "<step>5 - 2 = 3</step><"]
    if depth == 1:
        second = "step>5 - 2 = 3</step><" if "21" in done else "step>3 * 7 = 21</step><"
        return [second, ANSWER]
    if depth == 2:
        return ["step>21 + 3 = 24</step><", ANSWER]
    return [ANSWER]


def test_steps_after_a_merged_closing_tag_are_graded_with_its_carry():
    tok = MergingTokenizer()
    engine = FakeEngine(merged_steps, tokenizer=tok)
    agent, _ = make_agent(engine, num_workers=2, iterations_per_worker=8)
    result = search(agent)
    nodes = [n for n in iter_nodes(result.root) if n is not result.root]
    # The env got "<" + "step>..." (or "answer>..."): a step or the correct answer, never
    # a malformed action.
    assert {n.outcome["reason"] for n in nodes} == {"step", "correct"}
    for node in nodes:
        assert node.text == tok.decode(node.step_ids)
        assert node.carry == ("<" if node.text.endswith("><") else "")
    assert any(n.depth >= 3 for n in nodes)  # every kind of step was graded
    traj = result.trajectory
    assert traj.reward == 1.0 and traj.info["is_correct"]
    assert traj.info["text"] == tok.decode(traj.completion_ids)
    assert env_reward([traj.info["text"]]) == 1.0


def test_the_finishing_sample_is_graded_after_the_carry():
    finish = "step>5 - 2 = 3</step><step>21 + 3 = 24</step><" + ANSWER
    tok = MergingTokenizer()
    engine = FakeEngine(lambda done: ["<step>3 * 7 = 21</step><"], finish, tokenizer=tok)
    agent, _ = make_agent(engine, num_workers=1, iterations_per_worker=1)
    result = search(agent)
    traj = result.trajectory
    # Graded as "<" + "step>5 - 2 = 3</step>...", not as a completion starting "step>".
    assert traj.info["finished_by_sampling"]
    assert traj.reward == 1.0 and traj.info["is_correct"], traj.info["reason"]
    (child,) = result.root.children
    assert child.carry == "<" and not child.terminal
    text = "<step>3 * 7 = 21</step><step>5 - 2 = 3</step><step>21 + 3 = 24</step><" + ANSWER
    assert traj.info["text"] == tok.decode(traj.completion_ids) == text


# --- the Agent protocol ---


def test_collect_searches_all_tasks_and_reports_search_metrics():
    agent, engine = make_agent(num_workers=3, iterations_per_worker=4)
    tasks = [TASK, {"numbers": [1, 2, 3, 4], "target": 10}]
    batch = asyncio.run(agent.collect(tasks))
    assert agent.name == "mcts"
    assert len(batch.trajectories) == 2
    for tag in (
        "search/tree_size",
        "search/max_depth",
        "search/unique_children_per_expansion",
        "search/root_visit_entropy",
        "search/terminal_leaf_frac",
        "search/chosen_reward",
        "search/best_reward_in_tree",
        "search/engine_time_s",
        "search/overhead_time_s",
        "search/collisions",
        "train/reward_mean",
    ):
        assert tag in batch.metrics and math.isfinite(batch.metrics[tag]), tag
    assert batch.metrics["train/reward_mean"] == pytest.approx(
        sum(t.reward for t in batch.trajectories) / 2
    )
    assert batch.metrics["search/best_reward_in_tree"] >= batch.metrics["search/chosen_reward"]
    assert 0 <= batch.metrics["search/terminal_leaf_frac"] <= 1
    assert batch.samples and batch.samples[0].startswith(PROMPT)
    assert (
        batch.trajectories[1].prompt_ids
        == engine.tokenizer("Numbers: 1 2 3 4\nTarget: 10\n")["input_ids"]
    )


def test_collect_metrics_are_documented_tags():
    agent, _ = make_agent(num_workers=3, iterations_per_worker=4)
    batch = asyncio.run(agent.collect([TASK, {"numbers": [1, 2, 3, 4], "target": 10}]))
    assert set(batch.metrics) <= set(TAGS)


# --- diagnostics: generated tokens, finishing, value calibration ---


def test_gen_tokens_count_every_sampled_completion_of_the_batch():
    # Only the root is expanded (every child is terminal), K = 4 samples of 3 scripted
    # answers: samples 0, 1, 2, 0. Nothing is finished by sampling.
    answers = ["<answer>3 * 7 + 5 - 2</answer>", "<answer>3 + 5</answer>", "<step>cut"]
    agent, engine = make_agent(
        FakeEngine(lambda done: answers), num_workers=3, iterations_per_worker=5
    )
    per_tree = 2 * len(answers[0]) + len(answers[1]) + len(answers[2])  # one token a char
    batch = asyncio.run(agent.collect([TASK, {"numbers": [1, 2, 3, 4], "target": 10}]))
    assert batch.metrics["gen/tokens"] == 2 * per_tree
    assert batch.metrics["gen/samples"] == 2 * 4
    # More than the emitted trajectories hold: the trainer's budget must see all of it.
    assert batch.metrics["gen/tokens"] > sum(len(t.completion_ids) for t in batch.trajectories)
    assert batch.metrics["search/finished_by_sampling_frac"] == 0.0


def test_gen_tokens_include_merged_duplicates_and_the_finishing_sample():
    steps = ["<step>3 * 7 = 21</step>", "<step>5 - 2 = 3</step>"]
    finish = "<step>21 + 3 = 24</step><answer>3 * 7 + 5 - 2</answer>"
    agent, engine = make_agent(
        FakeEngine(lambda done: steps, finish=finish), num_workers=1, iterations_per_worker=1
    )
    result = search(agent)
    assert len(result.root.children) == 2  # samples 0, 1, 0, 1 merged into two children
    assert result.trajectory.info["finished_by_sampling"]
    assert result.counters.sampled_tokens == 2 * len(steps[0]) + 2 * len(steps[1]) + len(finish)
    assert result.counters.sampled_completions == 4 + 1


def test_paths_that_cannot_terminate_are_all_finished_by_sampling():
    def steps_only(done: str) -> list[str]:
        return ["<step>3 * 7 = 21</step>", "<step>5 - 2 = 3</step>"]

    agent, _ = make_agent(FakeEngine(steps_only), num_workers=2, iterations_per_worker=6)
    batch = asyncio.run(agent.collect([TASK, {"numbers": [1, 2, 3, 4], "target": 10}]))
    assert batch.metrics["search/finished_by_sampling_frac"] == 1.0
    # No terminal node in any tree: nothing to compare the chosen reward with.
    assert "search/best_minus_chosen" not in batch.metrics
    # Searches whose max-visit paths reach an answer are not finished by sampling.
    agent, _ = make_agent(num_workers=4, iterations_per_worker=10)
    batch = asyncio.run(agent.collect([TASK, TASK]))
    assert batch.metrics["search/finished_by_sampling_frac"] == 0.0


def test_best_minus_chosen_is_the_gap_to_the_best_terminal_in_the_tree():
    agent, _ = make_agent(num_workers=3, iterations_per_worker=4)
    result = search(agent)
    best = max(n.reward for n in iter_nodes(result.root) if n.terminal)
    assert result.stats["best_minus_chosen"] == pytest.approx(best - result.trajectory.reward)


def test_best_terminal_is_none_without_an_end_and_prefers_visits_on_ties():
    root = Node(state=None)
    assert best_terminal(root) is None
    a = Node(state=None, parent=root, terminal=True, reward=0.5, visits=1)
    b = Node(state=None, parent=root, terminal=True, reward=0.5, visits=3)
    c = Node(state=None, parent=root, terminal=False, reward=0.9, visits=9)
    root.children = [a, b, c]
    assert best_terminal(root) is b


def test_value_calibration_arithmetic():
    up = value_calibration([0.1, 0.5, 0.9], [-1.0, 0.0, 1.0])
    assert up["value_reward_corr"] == pytest.approx(1.0)
    assert up["value_abs_err"] == pytest.approx((1.1 + 0.5 + 0.1) / 3)
    down = value_calibration([0.9, 0.5, 0.2], [-1.0, 0.0, 1.0])
    assert down["value_reward_corr"] < -0.9
    # Undefined correlations are left out, the error is kept.
    assert set(value_calibration([0.1, 0.5], [0.0, 1.0])) == {"value_abs_err"}
    assert set(value_calibration([0.1, 0.5, 0.9], [1.0, 1.0, 1.0])) == {"value_abs_err"}
    assert value_calibration([], []) == {}


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_value_reward_correlation_is_pooled_over_the_batch(sign):
    # Each tree: the root is expanded into one terminal answer, so its path holds one
    # expanded node (the root) and each search gives one (V(root), reward) pair; only the
    # pool of the three has a correlation. V is scripted per prompt, in the rewards' order
    # (sign 1) or against it (sign -1).
    answer = "<answer>3 * 7 + 5 - 2</answer>"
    tasks = [TASK, {"numbers": [3, 5, 7, 2], "target": 30}, {"numbers": [3, 5, 7, 2], "target": 48}]
    prompts = [f"Numbers: 3 5 7 2\nTarget: {t['target']}\n" for t in tasks]
    scripted_v = dict(zip(prompts, [sign * 0.8, 0.0, -sign * 0.8], strict=True))

    class Valued(FakeEngine):
        async def values(self, states):
            return [scripted_v[self.tokenizer.decode(s)] for s in states]

    agent, _ = make_agent(Valued(lambda done: [answer]), num_workers=1, iterations_per_worker=2)
    batch = asyncio.run(agent.collect(tasks))
    rewards = [t.reward for t in batch.trajectories]
    # 24 is right for the first task, 6/30 off for the second, 24/48 for the third.
    assert rewards == pytest.approx([1.0, 1 - 2 * 6 / 30, 1 - 2 * 24 / 48])
    assert math.copysign(1.0, batch.metrics["search/value_reward_corr"]) == sign
    values = [scripted_v[p] for p in prompts]
    assert batch.metrics["search/value_abs_err"] == pytest.approx(
        sum(abs(v - r) for v, r in zip(values, rewards, strict=True)) / 3
    )
