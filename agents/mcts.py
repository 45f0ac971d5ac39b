"""MCTS-distill: parallel pUCT tree search over reasoning steps, distilled into the policy.

The method of "tree search distillation" (the seed paper of this project; see
``docs/design.md``, "The reference method"): for each prompt, ``num_workers`` coroutines share
one search tree whose edges are reasoning *steps* (``<step>...</step>`` or the final
``<answer>...</answer>``, or the tags the env names in its ``ACTION_TAGS``). Each simulation selects a path by pUCT with virtual loss,
expands the leaf with K sampled one-step completions (priors = softmax over their summed
logprobs), evaluates it with the learner's value head, and backs the value up. After the
search, ``MCTSConfig.distill`` decides what the task hands the learner: the max-visit path
from the root (the paper's), the path to the best end of the episode the tree found, or
every distinct correct end it found (rejection sampling with the search as the sampler).
The learner trains them with CISPO + value MSE + KL and ``A_t = r - sg(V_old(s_t))``
(``Trajectory.advantages = None``). Paper settings (Qwen-2.5-1.5B): 16 workers x 100
iterations, K = 4, 64 step tokens at T = 0.8, c_puct = 0.5, virtual loss 1, max-visit
distillation.

Defects of the reference implementation that this file does not copy:

1. A newly expanded leaf was backed up twice (W = 2v at N = 1). Here every simulation
   backs up exactly once: V(leaf) for an expansion, the env reward for a terminal node.
2. A child that already ended the episode was expanded on its first visit. Here children
   are stepped through the env when created; terminal ones are leaves for good and back up
   the env's reward.
3. "Virtual loss" only bumped visit counts, which made a busy *bad* branch look better
   (its Q moved towards 0). Here an in-flight path both raises N and lowers W by
   ``virtual_loss`` on every node, and backup removes exactly that.
4. The selected trajectory could stop before any answer. Here a chosen path that ends
   on a non-terminal node is finished with a policy sample (``sample_and_grade``) and
   graded by the env, so every trajectory carries a real episode reward.

Two more rules that a shared tree needs: a node being expanded is marked busy, and a
worker that reaches it waits for that expansion and continues below it (no node is
expanded twice; ``search/collisions``); and a worker that has just visited a terminal node
while expansions are in flight waits for one to return before its next simulation, since
terminal visits cost no engine call and would otherwise pile up on whatever terminal the
other workers' virtual losses leave free (``search/terminal_waits``).

Step verdicts (``MCTSConfig.prune_failed_steps``). ``env.step`` reports its check of a
``<step>`` in ``info["step_check"]``, a verdict other than ``ok``/``unchecked`` when the step
breaks the task's rules (Countdown: a number that is not available, wrong arithmetic;
GSM8K: an arithmetic error). Such a step is a dead end, and the search prunes it when it
expands its parent: the step becomes no child (it is kept in ``Node.pruned``, prior 0), and
the node's priors are renormalised over the steps that passed, as AlphaZero masks illegal
moves. A node none of whose K sampled steps passed is *dead* (after
``expansion_retries`` more expansions that fared no better, each backing up the dead-end
value), and so is a node all of whose children died: a dead node is never selected again,
so the search cannot loop on it. The simulation that finds a dead end still counts as one: it backs up the env's
``format_failure_reward`` (what an episode that breaks the rules earns; -1 for an env
without a ``reward_config``), so that the parent's Q shows the dead end; once the root is
dead the workers stop. Pruning rather than keeping failed steps as terminal children with a
penalty: such children would still be selected (each visit a simulation without an engine
call that learns nothing new), could end the max-visit path on a step that does not end
the episode, and a node whose K steps all failed would never stop drawing visits. Only
the verdict is read, through the env contract, so any env with step checks gets this, and
one without them (every verdict ``unchecked``, or no ``step_check`` at all) grows exactly
the tree it grew before. ``search/pruned_frac`` is the share of the distinct sampled
steps that were pruned.

Steps are cut at their closing tag, but keep every sampled token id; with a BPE tokenizer
the last id can run past the tag (Qwen2 merges ``><`` in ``</step><step>``), so the ids
hold text the step's action lacks (``Sample.overhang``). A node keeps that text as its
``carry`` and gives it to the env in front of its children's actions and of the finishing
sample, so the env is fed exactly the text the path's ids decode to.

(The reference's answer parser and value-head LayerNorm defects live in the env grader and
the learner; search values here come from ``PolicyEngine.values``, the learner's head.)

Logged metrics (``RolloutBatch.metrics``; per-task values averaged over the batch, times
summed): ``search/tree_size`` (nodes), ``search/max_depth``, ``search/depth`` (steps of the
chosen path taken from the tree: the max-visit path for ``distill="max_visits"``, else the
path to the best end in the tree when it has one), ``search/unique_children_per_expansion``,
``search/root_visit_entropy`` (nats, over the root's children), ``search/terminal_leaf_frac``
(leaves that end the episode), ``search/chosen_reward``, ``search/best_reward_in_tree``
(best terminal reward, over trees that have one), ``search/root_value`` (root W/N),
``search/collisions`` (waits on a node another worker was expanding),
``search/terminal_waits`` (a worker that just visited a terminal node waited for an
expansion to finish instead of revisiting it at once; see ``TreeSearch._simulate``),
``search/engine_time_s`` (seconds awaiting engine calls; concurrent calls each count),
``search/overhead_time_s`` (seconds of search code between awaits: selection, env steps,
backup), ``search/pruned_frac`` (sampled steps whose env check failed, of the distinct
steps sampled; only with ``prune_failed_steps``), ``search/prefix_cache_hit`` (the share
of the expansions' prefix tokens that the engine's prefix cache served, pooled over the
batch: a tree re-sends its path with every expansion), ``train/reward_mean`` and
``train/correct_frac`` of the chosen trajectories (one per search, whatever ``distill``
emits), and ``gen/trajectories`` (what the batch hands the learner).

What shows whether the search helps: ``search/best_minus_chosen`` (best terminal reward in
the tree minus the chosen trajectory's, over trees that have a terminal node; negative
when a finishing sample beat the tree), ``search/finished_by_sampling_frac`` (chosen paths
that stopped before the episode ended and were finished by a policy sample: a high share
means the trajectories are mostly plain samples), and the value head's calibration on the
chosen paths, pooled over the batch (``value_calibration``): ``search/value_reward_corr``
(Pearson r of V(s) of each expanded node on the path with the trajectory's final reward;
left out below 3 pairs or without variance) and ``search/value_abs_err`` (mean
|V(s) - reward|). ``gen/tokens`` and ``gen/samples`` count everything the engine sampled
for the batch (every expansion's K completions, merged duplicates included, and the
finishing samples), not just the emitted trajectories, so that agents compared at equal
generated tokens and ``perf/tokens_per_s`` are fair to MCTS.

Usage (the training loop drives this on the engine's event loop)::

    agent = MCTSAgent(MCTSConfig(num_workers=16), "Countdown-v0", {"reward": "dense"}, engine)
    batch = await agent.collect([{"index": 0}, {"index": 1}])
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np

from langrl.agents.base import RolloutBatch, request_seed_base, split_task_seed
from langrl.agents.rollout import sample_and_grade
from langrl.agents.tree_page import tree_to_dict
from langrl.checks import check_int, check_ints
from langrl.engine.base import PolicyEngine, PromptTooLongError, SamplingConfig, same_replica
from langrl.envs import make_env
from langrl.envs.base import action_tags, step_check_failed
from langrl.stats import pearson
from langrl.trajectory import Trajectory

__all__ = [
    "MCTSAgent",
    "MCTSConfig",
    "Node",
    "SearchResult",
    "TreeSearch",
    "backup",
    "puct_score",
    "select_child",
    "value_calibration",
]

#: How many transcripts ``collect`` returns for TensorBoard's text tab.
NUM_TRANSCRIPTS = 2


# --- config ---

#: ``MCTSConfig.distill`` values.
DISTILLS = ("max_visits", "best_end", "solutions")
#: ``MCTSConfig.priors`` values.
PRIORS = ("policy", "sampling")
_DISTILL = "'distill' (" + " | ".join(DISTILLS) + ")"


@dataclass
class MCTSConfig:
    """Hyperparameters of MCTS-distill. Defaults suit the tiny CPU model; each field notes
    the paper's value (Qwen-2.5-1.5B-Instruct on 8xH100)."""

    # --- search ---
    num_workers: int = 4
    """Worker coroutines sharing one tree per task (W). More workers keep more requests in
    flight for the engine to batch, at the price of less sequential information per
    simulation. Paper: 16."""
    iterations_per_worker: int = 8
    """Simulations each worker runs; a search runs ``num_workers * iterations_per_worker``
    simulations in all. Paper: 100."""
    num_expansions: int = 4
    """Completions of one step sampled when a node is expanded (K); identical ones may be
    merged, so a node has at most K children. Paper: 4."""
    c_puct: float = 0.5
    """Exploration weight in ``Q + c_puct * P * sqrt(N_parent) / (1 + N_child)``; larger
    trusts the prior longer. Paper: 0.5."""
    virtual_loss: float = 1.0
    """While a simulation's path is in flight, every node on it counts ``virtual_loss``
    extra visits and ``virtual_loss`` less value sum (i.e. lost games at value -1), so
    concurrent workers spread out. 0 disables it. Paper: 1."""
    first_play_value: float = 0.0
    """Q of a child that has never been visited (in [-1, 1]). 0 is neutral for the dense
    reward in [-1, 1]; lower values make the search go deeper before widening, higher ones
    try every sibling first. Paper: not stated."""
    root_dirichlet_alpha: float = 0.3
    """Concentration of the Dirichlet noise mixed into the root priors (AlphaZero); only
    used when ``root_noise_fraction > 0``. Paper: no noise."""
    root_noise_fraction: float = 0.0
    """Weight of the Dirichlet noise in the root priors, in [0, 1); 0 = off. Paper: off."""
    value_head: bool = True
    """Back up V(leaf) from the learner's value head (``PolicyEngine.values``, a forward
    pass of the transformers copy beside vLLM on every expansion). False backs up
    ``first_play_value`` for a leaf that does not end the episode and skips that pass: use
    it when the head is not trained (``c_value = 0``), whose output is then a constant
    anyway, so only terminal rewards steer the search; the run's ``c_value`` then defaults
    to 0 (``MCTSAgent.learner_defaults``). Paper: True (value head trained)."""
    merge_identical: bool = True
    """Merge sampled steps with identical token ids into one child (one entry in the prior
    softmax, see ``TreeSearch._expand``); saves engine calls and keeps visit counts of one
    step in one place. False keeps duplicates as separate children. Paper: not described."""
    prune_failed_steps: bool = True
    """Prune a sampled step whose env check fails (``info["step_check"]`` not ``ok`` or
    ``unchecked``: Countdown's unavailable number or wrong arithmetic, GSM8K's arithmetic
    error): it becomes no child, a node left without a live step is dead and never selected
    again, and the simulation that found it backs up the env's ``format_failure_reward``
    (module docstring, "Step verdicts"). An env without step checks searches exactly as with
    False. False ignores the verdicts: the paper's search, for ablations, and the way out
    for an env whose checker rejects steps that are valid. Paper: False (not described)."""
    expansion_retries: int = 0
    """With ``prune_failed_steps``: how many more times a node none of whose K sampled
    steps passed its check is expanded again (K fresh samples each time, on later visits)
    before it is declared dead. Each failed expansion backs up the dead-end value, so the
    parent's Q shows it, and its steps join ``Node.pruned``. With most sampled steps
    failing (``search/pruned_frac``), K failures in a row are common even where a valid
    step exists, and a dead root ends the search with a plain policy sample. 0 (default) =
    dead at the first failed expansion: on 96 train problems x 2 at the reproduce preset,
    2 retries doubled the tokens for 18 correct ends against 14 (2.8k generated tokens per
    correct end against 1.9k; ``benchmarks/bench_mcts_search.py --compare
    expansion_retries``). Paper: none."""

    # --- generation ---
    max_step_tokens: int = 64
    """New tokens per sampled step; a step cut off here is malformed and ends its branch
    with the format-failure reward. Paper: 64."""
    temperature: float = 0.8
    """Sampling temperature of the step completions and of the finishing sample. Priors
    also sets the priors' distribution (``priors``). Paper: 0.8."""
    priors: str = "policy"
    """Which logprobs of a sampled step become its prior (softmax over a node's distinct
    children). ``"policy"``: the policy's own, at temperature 1; at any other
    ``temperature`` that costs an ``engine.score`` pass (a transformers forward beside vLLM
    on the same cores) per expansion. ``"sampling"``: the logprobs the step was sampled with
    (at ``temperature``, returned by the engine with the sample), so no extra pass; at
    T < 1 these priors are sharper than the policy's. At ``temperature = 1`` the two are
    the same. Paper: the policy's."""
    finish_max_tokens: int = 256
    """Token budget of the policy sample that finishes a chosen path which stops before
    the episode ends. Paper: none (its trajectory could stop short)."""
    # --- distillation ---
    distill: str = "max_visits"
    """What a search hands the learner. ``"max_visits"`` (the paper's): the path that
    follows the most visited child from the root, one trajectory per search.
    ``"best_end"``: the path to the highest-reward end of the episode in the tree (ties:
    more visits, then earlier in the tree), or the max-visit path when no simulation
    reached an end; one trajectory per search. It distils the best end the search found,
    which the max-visit path can miss (``search/best_minus_chosen``). ``"solutions"``: every
    distinct correct end in the tree (``is_correct``), best first (reward, visits, tree
    order), at most ``max_solutions``; a search that found none emits nothing. That is
    rejection sampling with the search as the sampler, so the run's ``c_value`` defaults to
    0 (``MCTSAgent.learner_defaults``); pair it with ``value_head=False``. A chosen path that
    stops before the episode ends is finished by a policy sample (``finish_max_tokens``);
    with ``"solutions"`` that happens only in a tree with no end, and the sample is
    emitted when it is correct. Every choice trains with value-head advantages
    (``A_t = r - V_old(s_t)``). ``configs/reproduce.yaml`` uses ``"solutions"``: at its 32
    simulations max-visit paths scored 0.4 below the best end, and distilling the dense
    reward's best ends (mostly legal wrong answers) made the policy worse
    (``results/README.md``). Paper: ``"max_visits"``."""
    max_solutions: int = 8
    """Most trajectories one search emits with ``distill="solutions"`` (>= 1); no other
    choice reads it. Paper: none (one trajectory per search)."""
    value_ends: int = 0
    """Besides what ``distill`` emits, hand the learner up to this many other ends of each
    tree as value-only trajectories (``Trajectory.value_only``): the value head learns
    ``V(s_t)`` towards their outcomes at every token of their paths, the policy does not
    imitate them. An end is a node that ended the episode (its reward) or, with
    ``prune_failed_steps``, a pruned step (the dead-end value the search backs up for it);
    they are drawn uniformly without replacement by the search's RNG, so their mix follows
    what the search met. The head then ranks open leaves having seen failures, not only
    distilled answers (a head fit on ``distill="solutions"`` alone would learn V = 1).
    Needs ``value_head`` (the search reads the head); the run's ``c_value`` must be > 0,
    else the learner ignores them. 0 (default) = none: on the reproduce preset with
    ``value_head`` true, 8 value ends per tree trained a head that ranks ends (Pearson 0.59
    with their reward) but scored 2.0 +- 1.5 test points below no value head at equal
    tokens (``results/README.md``, ``v6/``). Paper: none (the head learns from the
    distilled path only)."""

    #: Former fields -> where their setting went; the config loader names it when a preset
    #: or override still uses one (``langrl.training.config``).
    RENAMED: ClassVar[dict[str, str]] = {
        "extraction": f"'extraction' was folded into {_DISTILL}: best_terminal is best_end",
        "paths_per_search": f"'paths_per_search' was folded into {_DISTILL}: several "
        "paths per search are distill: solutions, at most max_solutions",
        "min_reward": f"'min_reward' was folded into {_DISTILL}: distill: solutions keeps "
        "only correct ends",
        "advantages": f"'advantages' was folded into {_DISTILL}: every choice uses "
        "value-head advantages ('tree' was removed)",
    }

    seed: int | None = None
    """Mixed into the per-task seeds a training run hands out (``langrl.agents.base``:
    ``task_seeds``), which seed each search's root noise, path draws and engine requests;
    ``None`` (default) = those seeds alone, which follow the run's ``seed``. Tasks without a
    seed (the agent used on its own): seeds an RNG that draws one seed per search, ``None``
    = the engine's RNG (fastest in vLLM). A search is reproducible from its seed when its
    engine calls return in the same order: always with ``num_workers = 1``; with more,
    which worker's expansion returns first depends on the engine's timing, and so may the
    tree (see ``docs/design.md``, "Reproducibility")."""

    # --- inspection ---
    tree_every: int = 100
    """Every ``tree_every``-th search of the agent (counted across ``collect`` calls, the
    first one included) is saved as a tree page: ``collect`` puts its ``tree_to_dict`` into
    ``RolloutBatch.pages``, and the training run writes it under ``<run_dir>/trees/`` as
    JSON and HTML (``langrl.agents.tree_page``). 0 = never. Paper: none."""

    def __post_init__(self) -> None:
        positive = ("num_workers", "iterations_per_worker", "num_expansions",
                    "max_step_tokens", "finish_max_tokens", "max_solutions")  # fmt: skip
        check_ints(self, dict.fromkeys(positive, 1))
        check_int("MCTSConfig", "tree_every", self.tree_every, 0)
        check_int("MCTSConfig", "value_ends", self.value_ends, 0)
        check_int("MCTSConfig", "expansion_retries", self.expansion_retries, 0)
        if self.value_ends and not self.value_head:
            raise ValueError(
                "MCTSConfig.value_ends trains the value head the search reads, but "
                "value_head is False: set value_head true or value_ends 0"
            )
        check_int("MCTSConfig", "seed", self.seed, optional=True)
        if not self.c_puct >= 0:
            raise ValueError(f"MCTSConfig.c_puct must be >= 0, got {self.c_puct}")
        if not self.virtual_loss >= 0:
            raise ValueError(f"MCTSConfig.virtual_loss must be >= 0, got {self.virtual_loss}")
        if not -1.0 <= self.first_play_value <= 1.0:
            raise ValueError(
                f"MCTSConfig.first_play_value must be in [-1, 1] (the value range), "
                f"got {self.first_play_value}"
            )
        if not self.root_dirichlet_alpha > 0:
            raise ValueError(
                f"MCTSConfig.root_dirichlet_alpha must be > 0, got {self.root_dirichlet_alpha}"
            )
        if not 0.0 <= self.root_noise_fraction < 1.0:
            raise ValueError(
                f"MCTSConfig.root_noise_fraction must be in [0, 1), got {self.root_noise_fraction}"
            )
        if not self.temperature > 0:
            raise ValueError(f"MCTSConfig.temperature must be > 0, got {self.temperature}")
        if self.priors not in PRIORS:
            raise ValueError(
                f"MCTSConfig.priors must be one of {', '.join(PRIORS)}, got {self.priors!r}"
            )
        if self.distill not in DISTILLS:
            raise ValueError(
                f"MCTSConfig.distill must be one of {', '.join(DISTILLS)}, got {self.distill!r}"
            )


# --- the tree ---


@dataclass(eq=False)
class Node:
    """One search-tree node: the env state after its step, and its search statistics.

    Visit count and value sum exclude virtual loss; ``effective_visits`` and ``q`` include
    the paths currently in flight through the node (``in_flight``).
    """

    state: Any = field(repr=False)
    """Immutable env snapshot (``env.unwrapped.get_state()``) after this node's step."""
    parent: Node | None = field(default=None, repr=False)
    step_ids: list[int] = field(default_factory=list)
    """Token ids the engine sampled for this step (empty at the root)."""
    step_logprobs: list[float] = field(default_factory=list)
    """Sampling-distribution logprobs of ``step_ids`` (the behaviour policy)."""
    text: str = ""
    """Decoded text of ``step_ids`` (the sample's ``text + overhang``): a path's texts
    joined are the decode of its ids (the trajectory's ``info["text"]``)."""
    carry: str = ""
    """The end of ``text`` not yet given to the env: the sample's ``overhang`` past its
    stop string (e.g. the ``<`` of a merged ``><`` token). Each child's action is this
    node's ``carry`` + the child sample's text, and it starts the finishing sample's."""
    prior: float = 1.0
    depth: int = 0
    policy_version: int = 0
    num_samples: int = 1
    """How many of the K samples produced this step (> 1 when identical ones merged)."""
    terminal: bool = False
    """The env episode ended with this step (answer, malformed step or step limit)."""
    reward: float = 0.0
    """The env's reward of this node's step; the episode's reward when ``terminal``."""
    outcome: dict[str, Any] = field(default_factory=dict)
    """The env's info of this node's step (``reason``, ``is_correct`` when terminal)."""
    visits: int = 0
    value_sum: float = 0.0
    in_flight: int = 0
    """Simulations whose path currently runs through this node (each one a virtual loss)."""
    value_estimate: float | None = None
    """V(s) from the value head, set when the node is expanded."""
    children: list[Node] = field(default_factory=list, repr=False)
    pruned: list[Node] = field(default_factory=list, repr=False)
    """Sampled steps of this node whose env check failed (``MCTSConfig.prune_failed_steps``):
    kept for inspection with prior 0, never selected, not in ``children``."""
    dead: bool = False
    """No live step below: none of the node's sampled steps passed its check (in
    ``1 + expansion_retries`` expansions), or all of its children are dead. A dead node is
    never selected again."""
    failed_expansions: int = 0
    """Expansions of this node whose K steps all failed their check."""
    expanding: asyncio.Event | None = field(default=None, repr=False)
    """Set while one worker expands the node; others wait on it instead of expanding too."""

    def effective_visits(self, virtual_loss: float) -> float:
        """N including the virtual visits of in-flight paths."""
        return self.visits + virtual_loss * self.in_flight

    def q(self, virtual_loss: float, first_play_value: float) -> float:
        """Mean value including virtual losses; ``first_play_value`` if never visited."""
        n = self.effective_visits(virtual_loss)
        if n == 0:
            return first_play_value
        return (self.value_sum - virtual_loss * self.in_flight) / n

    def path(self) -> list[Node]:
        """Nodes from the root down to this one."""
        nodes, node = [], self
        while node is not None:
            nodes.append(node)
            node = node.parent
        return nodes[::-1]


def puct_score(
    child: Node, parent: Node, c_puct: float, virtual_loss: float, first_play_value: float
) -> float:
    """``Q(child) + c_puct * P(child) * sqrt(N(parent)) / (1 + N(child))`` (AlphaZero's pUCT),
    with visits and values including virtual loss."""
    n_parent = parent.effective_visits(virtual_loss)
    n_child = child.effective_visits(virtual_loss)
    u = c_puct * child.prior * math.sqrt(n_parent) / (1.0 + n_child)
    return child.q(virtual_loss, first_play_value) + u


def select_child(node: Node, config: MCTSConfig) -> Node:
    """The live (not dead) child with the highest pUCT score (the first one on ties:
    creation order). ``node`` must have a live child: one without is dead itself."""
    return max(
        (c for c in node.children if not c.dead),
        key=lambda c: puct_score(
            c, node, config.c_puct, config.virtual_loss, config.first_play_value
        ),
    )


def mark_dead(node: Node) -> None:
    """Mark ``node`` dead, and each ancestor whose children are then all dead."""
    node.dead = True
    parent = node.parent
    while parent is not None and all(c.dead for c in parent.children):
        parent.dead = True
        parent = parent.parent


class SteppedSample(NamedTuple):
    """One distinct sampled step of an expansion, already stepped through the env."""

    sample: Any
    """The first ``Sample`` of its merge group."""
    count: int
    """How many of the K samples it stands for."""
    state: Any
    """The env snapshot after the step."""
    reward: float
    ended: bool
    """The step ended the episode (terminated or truncated)."""
    info: dict[str, Any]


def backup(path: Sequence[Node], value: float) -> None:
    """Add one visit of ``value`` to every node on ``path`` and lift the path's virtual
    loss. Called exactly once per simulation."""
    for node in path:
        node.in_flight -= 1
        node.visits += 1
        node.value_sum += value


def best_terminal(root: Node) -> Node | None:
    """The highest-reward node that ends the episode (ties: more visits, then the first in
    ``iter_nodes`` order), or None when the tree has no such node."""
    best = None
    for node in iter_nodes(root):
        if node.terminal and (
            best is None or (node.reward, node.visits) > (best.reward, best.visits)
        ):
            best = node
    return best


def path_parts(path: Sequence[Node]) -> tuple[list[int], list[float], str, list[int]]:
    """Token ids, behaviour logprobs, text and policy versions of a path's steps (root
    excluded), concatenated in order."""
    ids = [t for n in path for t in n.step_ids]
    logprobs = [lp for n in path for lp in n.step_logprobs]
    return ids, logprobs, "".join(n.text for n in path), [n.policy_version for n in path]


def softmax(logits: Sequence[float]) -> list[float]:
    """Numerically stable softmax of a short list."""
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def iter_nodes(root: Node) -> Iterator[Node]:
    """Every node of the tree, depth first."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.children)


# --- search statistics ---


@dataclass
class SearchStats:
    """Counters of one search; ``tree_stats`` adds what the finished tree shows."""

    sampled_tokens: int = 0
    """Tokens the engine sampled: all K completions of every expansion (merged duplicates
    included) and the finishing sample (``gen/tokens``)."""
    sampled_completions: int = 0
    """Completions the engine sampled, counted like ``sampled_tokens`` (``gen/samples``)."""
    expansions: int = 0
    unique_children: int = 0
    """Distinct steps sampled by all expansions, pruned ones included."""
    pruned_children: int = 0
    """Distinct sampled steps pruned for a failed env check (``search/pruned_frac``)."""
    prompt_tokens: int = 0
    """Prompt tokens of the expansion calls (each node's prefix, once per call)."""
    cached_prompt_tokens: int = 0
    """Of those, what the engine's prefix cache served (``search/prefix_cache_hit``)."""
    collisions: int = 0
    terminal_waits: int = 0
    engine_time_s: float = 0.0
    overhead_time_s: float = 0.0


def tree_stats(root: Node, stats: SearchStats) -> dict[str, float]:
    """Summary of a finished search, keyed by ``search/`` tag name (without the group)."""
    nodes = list(iter_nodes(root))
    leaves = [n for n in nodes if not n.children]
    terminal_rewards = [n.reward for n in nodes if n.terminal]
    shares = [c.visits / max(1, sum(k.visits for k in root.children)) for c in root.children]
    out = {
        "tree_size": float(len(nodes)),
        "max_depth": float(max(n.depth for n in nodes)),
        "unique_children_per_expansion": stats.unique_children / max(1, stats.expansions),
        "root_visit_entropy": -sum(p * math.log(p) for p in shares if p > 0),
        "terminal_leaf_frac": sum(n.terminal for n in leaves) / len(leaves),
        "collisions": float(stats.collisions),
        "terminal_waits": float(stats.terminal_waits),
        "engine_time_s": stats.engine_time_s,
        "overhead_time_s": stats.overhead_time_s,
    }
    if terminal_rewards:
        out["best_reward_in_tree"] = max(terminal_rewards)
    return out


def value_calibration(values: Sequence[float], rewards: Sequence[float]) -> dict[str, float]:
    """How well V(s) predicted the episode's reward, over paired ``(V(s), final reward)``:
    ``value_abs_err`` (mean absolute error; left out without pairs) and ``value_reward_corr``
    (Pearson correlation; left out below 3 pairs or when either side is constant, where it
    is undefined or meaningless)."""
    if len(values) != len(rewards):
        raise ValueError(f"value_calibration: {len(values)} values for {len(rewards)} rewards")
    if not values:
        return {}
    v, r = np.asarray(values, dtype=float), np.asarray(rewards, dtype=float)
    out = {"value_abs_err": float(np.mean(np.abs(v - r)))}
    corr = pearson(values, rewards, min_pairs=3)
    if corr is not None:
        out["value_reward_corr"] = corr
    return out


@dataclass
class SearchResult:
    """One task's search: the tree, the emitted trajectory and the search statistics."""

    root: Node
    trajectory: Trajectory
    stats: dict[str, float]
    transcript: str
    counters: SearchStats = field(default_factory=SearchStats)
    """The search's raw counters (``sampled_tokens`` and ``sampled_completions`` are
    summed over a batch as ``gen/tokens`` and ``gen/samples``)."""
    path_values: list[float] = field(default_factory=list)
    """V(s) of the expanded nodes on the chosen path, root first (value calibration)."""
    emitted: list[Trajectory] = field(default_factory=list)
    """What the search hands to the learner (``MCTSConfig.distill``): ``[trajectory]``, or
    with ``"solutions"`` the tree's correct ends, best first (empty when it found none)."""
    chosen: Node | None = None
    """The last tree node of the chosen trajectory's path (``TreeSearch._extract``); a
    finishing sample, if any, continues from it (``langrl.agents.tree_page``)."""
    value_ends: list[Trajectory] = field(default_factory=list)
    """Value-only trajectories to other ends of the tree (``MCTSConfig.value_ends``)."""


# --- the agent ---


class MCTSAgent:
    """MCTS-distill agent: one parallel tree search per task; each search emits its chosen
    trajectory, or with ``distill="solutions"`` the correct ends its tree found.

    Args:
        config: Search hyperparameters.
        env_id: Gymnasium id of a langrl reasoning env (e.g. ``"Countdown-v0"``).
        env_kwargs: Keyword arguments for ``gym.make`` (e.g. ``{"reward": "dense"}``).
        engine: The shared policy engine (generation, scoring, value head).
    """

    name = "mcts"
    task_seeds = True  # a task's seed seeds its search (langrl.agents.base.Agent)
    config_class = MCTSConfig
    #: Search branches the env from snapshots (``get_state``/``set_state``/``task_info``).
    env_uses = ("rollouts", "search")

    @classmethod
    def learner_defaults(cls, config: MCTSConfig) -> dict[str, Any]:
        """``c_value = 0`` when the value head should not be trained: the search does not
        read it (``value_head`` False), so nothing would use what it learns; or
        ``distill="solutions"`` without ``value_ends``, whose trajectories are all correct,
        so a head fit on them alone would learn V = 1 and cancel ``A = r - V``."""
        if config.value_head and (config.distill != "solutions" or config.value_ends):
            return {}
        return {"c_value": 0.0}

    def __init__(
        self,
        config: MCTSConfig,
        env_id: str,
        env_kwargs: Mapping[str, Any] | None,
        engine: PolicyEngine,
    ) -> None:
        self.config = config
        self.engine = engine
        # One env serves every concurrent search: each use is set_state + step with no await
        # in between, so coroutines never see each other's state. Reset and step go through
        # the unwrapped env, whose get_state/set_state branch the tree (the registry's
        # SyncStepLimit has already copied the step limit into it).
        self.env = make_env(env_id, env_kwargs)
        # One expansion samples a single action: generation stops after either of the env's
        # closing tags (``</step>``/``</answer>`` unless the env names its own).
        self.step_stop = action_tags(self.env).action_stop
        self._rng = random.Random(config.seed)
        # Searches that collect() has finished so far: every tree_every-th one is saved.
        self.searches = 0

    async def collect(self, tasks: Sequence[Mapping[str, Any]]) -> RolloutBatch:
        """Search every task concurrently (the engine batches across all of their workers)
        and return what they emit (``MCTSConfig.distill``), with search statistics
        as ``search/`` metrics and the tree of every ``tree_every``-th search in ``pages``
        (``search_000001``: the agent's first search)."""
        # A task's own seed (from the training run) decides its search alone; without one,
        # seeds are drawn from the agent's RNG in task order (reproducible within a session).
        seeds = [self._search_seed(task) for task in tasks]
        outcomes = await asyncio.gather(
            *(self.search(task, seed=s) for task, s in zip(tasks, seeds, strict=True)),
            return_exceptions=True,
        )
        # A prompt longer than the engine's context skips its task, not the whole rollout.
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, PromptTooLongError):
                raise outcome
        results = [r for r in outcomes if not isinstance(r, BaseException)]
        # --- logging ---
        # Per-task statistics are averaged over the batch (best_reward_in_tree and
        # best_minus_chosen over the trees that reached an end); times are totals for the
        # whole call.
        metrics: dict[str, float] = {
            "gen/skipped_prompts": float(len(tasks) - len(results)),
            # Totals, like the sampling agents': what the engine generated for this batch.
            "gen/tokens": float(sum(r.counters.sampled_tokens for r in results)),
            "gen/samples": float(sum(r.counters.sampled_completions for r in results)),
        }
        # Pooled: the share of the expansions' prefixes the engine did not recompute.
        prompt_tokens = sum(r.counters.prompt_tokens for r in results)
        if prompt_tokens:
            cached = sum(r.counters.cached_prompt_tokens for r in results)
            metrics["search/prefix_cache_hit"] = cached / prompt_tokens
        for key in sorted({k for r in results for k in r.stats}):
            values = [r.stats[key] for r in results if key in r.stats]
            total_or_mean = sum if key.endswith("_time_s") else np.mean
            metrics[f"search/{key}"] = float(total_or_mean(values))
        # Pooled over the batch: one tree's path has too few nodes for a correlation.
        pairs = [(v, r.trajectory.reward) for r in results for v in r.path_values]
        calibration = value_calibration([v for v, _ in pairs], [rw for _, rw in pairs])
        metrics.update({f"search/{k}": v for k, v in calibration.items()})
        if results:
            trajectories = [r.trajectory for r in results]
            metrics["train/reward_mean"] = float(np.mean([t.reward for t in trajectories]))
            metrics["train/correct_frac"] = float(
                np.mean([t.info["is_correct"] for t in trajectories])
            )
        emitted = [t for r in results for t in r.emitted]
        metrics["gen/trajectories"] = float(len(emitted))
        pages = {}
        for result in results:  # task order: which searches are saved does not hang on timing
            self.searches += 1
            every = self.config.tree_every
            if every and (self.searches - 1) % every == 0:
                pages[f"search_{self.searches:06d}"] = tree_to_dict(result)
        value_ends = [t for r in results for t in r.value_ends]
        if self.config.value_ends:
            metrics["search/value_ends"] = float(len(value_ends)) / max(len(results), 1)
        return RolloutBatch(
            trajectories=emitted,
            metrics=metrics,
            samples=[r.transcript for r in results[:NUM_TRANSCRIPTS]],
            pages=pages,
            value_trajectories=value_ends,
        )

    async def search(self, task: Mapping[str, Any], seed: int | None = None) -> SearchResult:
        """Run one search for ``task`` (``env.reset`` options) and extract its trajectory.

        ``seed`` seeds this search's noise and request seeds; by default the task's own
        seed (mixed with ``config.seed``), else one drawn from the agent's RNG when
        ``config.seed`` is set, so repeated searches differ."""
        if seed is None:
            seed = self._search_seed(task)
        return await TreeSearch(self, task, seed).run()

    def _draw_seed(self) -> int | None:
        return self._rng.randrange(2**31) if self.config.seed is not None else None

    def _search_seed(self, task: Mapping[str, Any]) -> int | None:
        seed = request_seed_base(self.config.seed, split_task_seed(task)[1])
        return self._draw_seed() if seed is None else seed


class TreeSearch:
    """One task's search: the tree, its prompt, RNGs and counters; ``await run()`` searches
    and extracts the trajectory. ``root`` is readable (e.g. by tests) while it runs."""

    def __init__(self, agent: MCTSAgent, task: Mapping[str, Any], seed: int | None) -> None:
        self.config = agent.config
        self.engine = agent.engine
        self.env = agent.env
        self.step_stop = agent.step_stop
        self.stats = SearchStats()
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.seeded = seed is not None
        self.env.reset(options=split_task_seed(task)[0])  # the seed is not an env option
        self.info = self.env.task_info()
        self.root = Node(state=self.env.get_state())
        # What a dead end backs up (prune_failed_steps): the reward of an episode that
        # breaks the task's rules; an env of one's own need not have a reward_config.
        reward_config = getattr(self.env, "reward_config", None)
        self.dead_end_value = float(getattr(reward_config, "format_failure_reward", -1.0))
        self._expansions_in_flight = 0
        self._progress = asyncio.Event()  # replaced by a fresh one after every expansion
        self.prompt_ids = self.engine.encode_prompt(self.info)

    # --- helpers ---

    @contextmanager
    def _cpu(self) -> Iterator[None]:
        """Time a synchronous stretch of search code (no await inside): the overhead."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stats.overhead_time_s += time.perf_counter() - start

    async def _engine(self, awaitable: Any) -> Any:
        """Await one engine call, timing it (concurrent calls each count in full)."""
        start = time.perf_counter()
        try:
            return await awaitable
        finally:
            self.stats.engine_time_s += time.perf_counter() - start

    def _request_seed(self) -> int | None:
        return self.rng.randrange(2**31) if self.seeded else None

    def _prefix_ids(self, node: Node) -> list[int]:
        ids = list(self.prompt_ids)
        for n in node.path()[1:]:
            ids.extend(n.step_ids)
        return ids

    # --- search ---

    async def run(self) -> SearchResult:
        # Every call of this tree to one engine replica, whose prefix cache holds the tree.
        with same_replica():
            return await self._run()

    async def _run(self) -> SearchResult:
        workers = [asyncio.ensure_future(self._worker()) for _ in range(self.config.num_workers)]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            # One worker failed: stop its siblings instead of leaving them calling the engine.
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        trajectory, transcript, last = await self._extract()
        stats = tree_stats(self.root, self.stats)
        stats["chosen_reward"] = trajectory.reward
        stats["depth"] = float(trajectory.info["num_tree_steps"])
        stats["root_value"] = self.root.value_sum / max(1, self.root.visits)
        # 0 or 1 per search: its batch mean is the share finished by sampling.
        stats["finished_by_sampling_frac"] = float(trajectory.info["finished_by_sampling"])
        if "best_reward_in_tree" in stats:
            stats["best_minus_chosen"] = stats["best_reward_in_tree"] - trajectory.reward
        if self.config.prune_failed_steps:
            stats["pruned_frac"] = self.stats.pruned_children / max(1, self.stats.unique_children)
        trajectory.info["search"] = dict(stats)
        path_values = [n.value_estimate for n in last.path() if n.value_estimate is not None]
        emitted = self._emitted(trajectory, last)
        return SearchResult(
            self.root, trajectory, stats, transcript, self.stats, path_values, emitted, last,
            self._value_ends(emitted, last),
        )  # fmt: skip

    async def _worker(self) -> None:
        for _ in range(self.config.iterations_per_worker):
            if self.root.dead:
                return  # every step below the root failed its check: nothing left to search
            await self._simulate()

    async def _simulate(self) -> None:
        """One simulation: select with virtual loss, expand or read a terminal, back up once."""
        node = self.root
        node.in_flight += 1
        path = [node]
        try:
            while True:
                # --- selection ---
                with self._cpu():
                    # Only the root can be dead here (select_child skips dead children), or
                    # a node whose expansion this worker waited for.
                    while node.children and not node.dead:
                        node = select_child(node, self.config)
                        node.in_flight += 1
                        path.append(node)
                if node.terminal:
                    value = node.reward
                    break
                if node.dead:
                    value = self.dead_end_value
                    break
                if node.expanding is not None:
                    # Another worker is expanding this node: wait for its children rather
                    # than sampling the same step twice, then keep descending below it.
                    self.stats.collisions += 1
                    failed_before = node.failed_expansions
                    await node.expanding.wait()
                    stuck = not node.children and not node.terminal and not node.dead
                    if stuck and node.failed_expansions == failed_before:
                        raise RuntimeError("a concurrent expansion of this node failed")
                    continue  # (a failed expansion with retries left: expand it again)
                # --- expansion and evaluation ---
                value = await self._expand(node)
                break
        except BaseException:
            for n in path:  # lift the virtual loss without counting a visit
                n.in_flight -= 1
            raise
        # --- backup ---
        with self._cpu():
            backup(path, value)
        if node.terminal and self._expansions_in_flight:
            # A terminal visit needs no engine call, so without this a worker that the other
            # workers' virtual losses steer onto a terminal node would revisit it in one
            # synchronous burst (nothing new can be learned until an expansion returns),
            # piling visits on it; max-visit extraction would then pick it. Wait for news.
            self.stats.terminal_waits += 1
            await self._progress.wait()

    async def _expand(self, node: Node) -> float:
        """Sample K one-step completions of ``node``, add them as children, return V(node).

        Priors are the softmax over the children's temperature-1 sequence logprobs, one
        entry per *distinct* child: a merged child's probability is already in its
        logprob, and counting its copies as well would square it (duplicates occur in
        proportion to that probability). Children are stepped through the env at once, so
        terminal ones carry their episode reward and are never expanded. With
        ``prune_failed_steps``, a step whose env check failed goes to ``node.pruned`` instead
        (no prior, no scoring); if no step is left the node is dead (``mark_dead``) and the
        call returns the dead-end value instead of V(node).
        """
        cfg = self.config
        node.expanding = asyncio.Event()
        self._expansions_in_flight += 1
        try:
            with self._cpu():
                prefix = self._prefix_ids(node)
            sampling = SamplingConfig(
                n=cfg.num_expansions,
                max_tokens=cfg.max_step_tokens,
                temperature=cfg.temperature,
                stop=self.step_stop,
                seed=self._request_seed(),
            )
            # V(node) only needs the node's own ids: ask for it alongside the samples.
            try:
                if cfg.value_head:
                    generation, values = await asyncio.gather(
                        self._engine(self.engine.generate(prefix, sampling)),
                        self._engine(self.engine.values([prefix])),
                    )
                else:
                    generation = await self._engine(self.engine.generate(prefix, sampling))
            except PromptTooLongError:
                if node is self.root:
                    raise  # the task itself does not fit: collect() skips it
                # The path filled the context: the episode ends here without an answer.
                with self._cpu():
                    self.env.set_state(node.state)
                    _, reward, _, _, info = self.env.step("")
                    node.terminal, node.reward = True, float(reward)
                    node.outcome = {**info, "reason": "context_limit"}
                return node.reward
            with self._cpu():
                self.stats.sampled_completions += len(generation.samples)
                self.stats.sampled_tokens += sum(len(s.token_ids) for s in generation.samples)
                self.stats.prompt_tokens += len(prefix)
                self.stats.cached_prompt_tokens += generation.cached_prompt_tokens
                groups: dict[Any, list[Any]] = {}
                for i, sample in enumerate(generation.samples):
                    key = tuple(sample.token_ids) if cfg.merge_identical else i
                    groups.setdefault(key, []).append(sample)
                # Every distinct step goes through the env now (its verdict decides whether
                # it is pruned before any prior is computed for it); snapshots are immutable,
                # so the await below cannot change them.
                steps = []
                for samples in groups.values():
                    self.env.set_state(node.state)
                    action = node.carry + samples[0].text
                    _, reward, terminated, truncated, info = self.env.step(action)
                    ended, state = terminated or truncated, self.env.get_state()
                    step = SteppedSample(samples[0], len(samples), state, reward, ended, info)
                    steps.append(step)
                failed = [cfg.prune_failed_steps and step_check_failed(s.info) for s in steps]
                live = [s for s, bad in zip(steps, failed, strict=True) if not bad]
                pruned = [s for s, bad in zip(steps, failed, strict=True) if bad]
            if not live:
                logits = []  # nothing to rank: no scoring pass
            elif cfg.temperature == 1.0 or cfg.priors == "sampling":
                # The engine's logprobs are the sampling distribution's; at T = 1 (top_p = 1)
                # that is the policy itself.
                logits = [s.sample.cumulative_logprob for s in live]
            else:
                # Only the live steps are scored: a pruned one gets prior 0 anyway.
                scored = await self._engine(
                    self.engine.score(prefix, [s.sample.token_ids for s in live])
                )
                logits = [float(sum(lps)) for lps in scored]
            with self._cpu():
                # Softmax over the live steps alone: pruned steps are masked out and the
                # priors renormalised over the rest (as AlphaZero does with illegal moves).
                priors = softmax(logits) if live else []
                if live and node is self.root and cfg.root_noise_fraction > 0:
                    noise = self.np_rng.dirichlet([cfg.root_dirichlet_alpha] * len(priors))
                    eps = cfg.root_noise_fraction
                    priors = [float(p) for p in (1 - eps) * np.asarray(priors) + eps * noise]
                node.children = [
                    self._child(node, step, prior, generation.policy_version)
                    for step, prior in zip(live, priors, strict=True)
                ]
                node.pruned += [
                    self._child(node, step, 0.0, generation.policy_version) for step in pruned
                ]
                if cfg.value_head:
                    node.value_estimate = float(values[0])
                self.stats.expansions += 1
                self.stats.unique_children += len(steps)
                self.stats.pruned_children += len(pruned)
                if not live:
                    node.failed_expansions += 1
                    # K samples and not one valid step, retries spent: a dead end (and
                    # perhaps its parent). Otherwise a later visit samples K fresh steps.
                    if node.failed_expansions > cfg.expansion_retries:
                        mark_dead(node)
        finally:
            event, node.expanding = node.expanding, None
            event.set()
            self._expansions_in_flight -= 1
            progress, self._progress = self._progress, asyncio.Event()
            progress.set()
        if not node.children:  # dead, or a failed expansion to retry
            return self.dead_end_value
        return node.value_estimate if cfg.value_head else cfg.first_play_value

    @staticmethod
    def _child(node: Node, step: SteppedSample, prior: float, policy_version: int) -> Node:
        """The child of ``node`` for one distinct sampled step."""
        sample = step.sample
        return Node(
            state=step.state,
            parent=node,
            step_ids=list(sample.token_ids),
            step_logprobs=list(sample.logprobs),
            text=sample.text + sample.overhang,
            carry=sample.overhang,
            prior=prior,
            depth=node.depth + 1,
            policy_version=policy_version,
            num_samples=step.count,
            terminal=step.ended,
            reward=float(step.reward),
            outcome=dict(step.info),
        )

    # --- trajectory extraction ---

    async def _extract(self) -> tuple[Trajectory, str, Node]:
        """The chosen path: unless ``distill="max_visits"``, the one to the best end in the
        tree (``best_terminal``) when there is one; else follow max visit count from the
        root (ties: higher Q, then higher prior, so below a node whose children were never
        visited it takes the likeliest sampled step), live children before dead ones, which
        are known to lead to no valid step. A path that stops before the episode ends is
        finished with one policy sample. Returns the trajectory, its transcript and the last
        tree node of the path."""
        cfg = self.config
        node = self.root
        best = best_terminal(self.root) if cfg.distill != "max_visits" else None
        if best is not None:
            node = best
        while node.children:
            node = max(
                node.children,
                key=lambda c: (not c.dead, c.visits, c.q(0.0, cfg.first_play_value), c.prior),
            )
        path = node.path()[1:]
        ids, logprobs, text, versions = path_parts(path)
        finished_by_sampling = not node.terminal
        if node.terminal:
            reward, outcome = node.reward, node.outcome
        else:
            sampling = SamplingConfig(
                n=1,
                max_tokens=cfg.finish_max_tokens,
                temperature=cfg.temperature,
                seed=self._request_seed(),
            )
            prefix = self._prefix_ids(node)
            # Timed as engine time, although it includes grading the sample (a few env steps).
            (graded,) = await self._engine(
                sample_and_grade(
                    self.engine, self.env, node.state, prefix, sampling, carry=node.carry
                )
            )
            self.stats.sampled_completions += 1
            self.stats.sampled_tokens += len(graded.sample.token_ids)
            ids += graded.sample.token_ids
            logprobs += graded.sample.logprobs
            text += graded.sample.text + graded.sample.overhang
            versions.append(graded.policy_version)
            reward, outcome = graded.reward, graded.info
        trajectory = self._trajectory(
            ids, logprobs, text, versions, reward, outcome, len(path), finished_by_sampling
        )
        transcript = (
            f"{self.info['prompt']}{text}\n\n[reward {reward:.3f} ({outcome.get('reason')}); "
            f"{len(path)} steps from the tree{', finished by sampling' if finished_by_sampling else ''}]"
        )
        return trajectory, transcript, node

    def _emitted(self, trajectory: Trajectory, chosen: Node) -> list[Trajectory]:
        """What the search hands the learner (``MCTSConfig.distill``): the chosen
        trajectory, or with ``"solutions"`` the trajectories to the tree's distinct correct
        ends, best first (reward, then visits, then tree order, as ``best_terminal``), at
        most ``max_solutions``; the chosen trajectory stands for its own end."""
        cfg = self.config
        if cfg.distill != "solutions":
            return [trajectory]
        if trajectory.info["finished_by_sampling"]:
            # No end in the tree (else the chosen path would lead to the best one): the
            # search's one answer is the finished max-visit path, a solution if correct.
            return [trajectory] if trajectory.info["is_correct"] else []
        ends = [n for n in iter_nodes(self.root) if n.terminal and n.outcome.get("is_correct")]
        ends.sort(key=lambda n: (n.reward, n.visits), reverse=True)  # stable: tree order
        return [
            trajectory if n is chosen else self._end_trajectory(n)
            for n in ends[: cfg.max_solutions]
        ]

    def _value_ends(self, emitted: list[Trajectory], chosen: Node) -> list[Trajectory]:
        """Up to ``value_ends`` value-only trajectories to the tree's other ends: nodes that
        ended the episode (their reward) and pruned steps (the dead-end value), drawn
        uniformly by the search's RNG (in tree order). An end whose path is emitted already
        is left out (with ``distill="solutions"``, every correct end)."""
        count = self.config.value_ends
        if not count:
            return []
        solutions = self.config.distill == "solutions"

        def emitted_end(node: Node) -> bool:
            if solutions:
                return bool(node.outcome.get("is_correct"))
            return node is chosen and bool(emitted)

        nodes = list(iter_nodes(self.root))
        ends = [n for n in nodes if n.terminal and not emitted_end(n)]
        ends += [p for n in nodes for p in n.pruned]
        out = []
        for index in sorted(self.rng.sample(range(len(ends)), min(count, len(ends)))):
            node = ends[index]
            trajectory = self._end_trajectory(node)
            if not node.terminal:  # a pruned step: the value its dead end backs up
                trajectory.reward = self.dead_end_value
                trajectory.info["reason"] = "pruned_step"
            trajectory.value_only = True
            out.append(trajectory)
        return out

    def _end_trajectory(self, node: Node) -> Trajectory:
        """The trajectory of the tree path from the root to ``node``, an end of the episode."""
        path = node.path()[1:]
        return self._trajectory(
            *path_parts(path), node.reward, node.outcome, len(path), finished_by_sampling=False
        )

    def _trajectory(
        self,
        ids: list[int],
        logprobs: list[float],
        text: str,
        versions: list[int],
        reward: float,
        outcome: Mapping[str, Any],
        num_tree_steps: int,
        finished_by_sampling: bool,
    ) -> Trajectory:
        return Trajectory(
            prompt_ids=list(self.prompt_ids),
            completion_ids=ids,
            behaviour_logprobs=logprobs,
            reward=float(reward),
            advantages=None,
            temperature=self.config.temperature,  # every step and the finishing sample's
            # The oldest weights that sampled any part of it: staleness is never understated.
            policy_version=min(versions),
            agent=MCTSAgent.name,
            info={
                "task": self.info["task"],
                "text": text,
                "reason": outcome.get("reason"),
                "is_correct": bool(outcome.get("is_correct", False)),
                "num_tree_steps": num_tree_steps,
                "finished_by_sampling": finished_by_sampling,
            },
        )
