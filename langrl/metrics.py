"""Every TensorBoard tag langrl writes, in one place, and the logger that writes them.

Tags are two-level ``group/name`` (CleanRL's ``charts/`` vs ``losses/`` split, refined):

- ``train/``  training-time rewards and optimiser state (reward, grad norm, lr, KL, clipping)
- ``eval/``   held-out evaluation (mean@k on the test split, sparse reward)
- ``loss/``   every loss term the learner computes
- ``search/`` tree-search statistics (MCTS only)
- ``gen/``    what the engine generated (tokens, lengths, filtered groups)
- ``perf/``   throughput, staleness, wall-clock

``TAGS`` maps each tag to its meaning; the README's tag table and the end-to-end tests read
it. Components may log extra tags of their own (the learner's or MCTS agent's), but every
tag must be ``group/name`` with one of ``GROUPS``: ``TensorBoardLogger`` refuses flat names.

    tensorboard --logdir runs/
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

GROUPS = ("train", "eval", "loss", "search", "gen", "perf")

# --- train/ ---
TRAIN_REWARD_MEAN = "train/reward_mean"
TRAIN_REWARD_STD = "train/reward_std"
TRAIN_CORRECT_FRAC = "train/correct_frac"
TRAIN_FORMAT_OK_FRAC = "train/format_ok_frac"
TRAIN_BEST_REWARD_MEAN = "train/best_reward_mean"
TRAIN_ADVANTAGE_ABS_MEAN = "train/advantage_abs_mean"
TRAIN_GRAD_NORM = "train/grad_norm"
TRAIN_LR = "train/lr"
TRAIN_KL = "train/kl"
TRAIN_CLIP_FRAC = "train/clip_frac"
TRAIN_EPOCH = "train/epoch"
TRAIN_ENTROPY = "train/entropy"
TRAIN_RATIO_MEAN = "train/ratio_mean"
TRAIN_ADVANTAGE_MEAN = "train/advantage_mean"
TRAIN_VALUE_MEAN = "train/value_mean"
TRAIN_VALUE_REWARD_CORR = "train/value_reward_corr"
TRAIN_REWARD_MEAN_BATCH = "train/reward_mean_batch"
TRAIN_VALUE_ONLY_TRAJECTORIES = "train/value_only_trajectories"
TRAIN_STALENESS_MEAN = "train/staleness_mean"
TRAIN_SKIPPED_STEPS = "train/skipped_steps"

# --- eval/ ---
EVAL_MEAN_AT_K = "eval/mean_at_k"
EVAL_PASS_AT_K = "eval/pass_at_k"
EVAL_MEAN_AT_K_CI95 = "eval/mean_at_k_ci95"
EVAL_PASS_AT_K_CI95 = "eval/pass_at_k_ci95"
EVAL_FORMAT_OK_FRAC = "eval/format_ok_frac"
EVAL_REWARD_MEAN = "eval/reward_mean"
EVAL_COMPLETION_LEN = "eval/completion_len_mean"
EVAL_NUM_PROBLEMS = "eval/num_problems"

# --- loss/ ---
LOSS_TOTAL = "loss/total"
LOSS_POLICY = "loss/policy"
LOSS_VALUE = "loss/value"
LOSS_KL = "loss/kl"

# --- search/ --- (written by the MCTS agent, agents/mcts.py; listed here for reference)
SEARCH_TREE_SIZE = "search/tree_size"
SEARCH_MAX_DEPTH = "search/max_depth"
SEARCH_DEPTH = "search/depth"
SEARCH_UNIQUE_CHILDREN = "search/unique_children_per_expansion"
SEARCH_ROOT_VISIT_ENTROPY = "search/root_visit_entropy"
SEARCH_TERMINAL_LEAF_FRAC = "search/terminal_leaf_frac"
SEARCH_CHOSEN_REWARD = "search/chosen_reward"
SEARCH_BEST_REWARD_IN_TREE = "search/best_reward_in_tree"
SEARCH_ROOT_VALUE = "search/root_value"
SEARCH_BEST_MINUS_CHOSEN = "search/best_minus_chosen"
SEARCH_FINISHED_BY_SAMPLING = "search/finished_by_sampling_frac"
SEARCH_VALUE_REWARD_CORR = "search/value_reward_corr"
SEARCH_VALUE_ENDS = "search/value_ends"
SEARCH_VALUE_ABS_ERR = "search/value_abs_err"
SEARCH_COLLISIONS = "search/collisions"
SEARCH_TERMINAL_WAITS = "search/terminal_waits"
SEARCH_ENGINE_TIME_S = "search/engine_time_s"
SEARCH_OVERHEAD_TIME_S = "search/overhead_time_s"
SEARCH_PRUNED_FRAC = "search/pruned_frac"
SEARCH_PREFIX_CACHE_HIT = "search/prefix_cache_hit"

# --- gen/ ---
GEN_TOKENS = "gen/tokens"
GEN_SAMPLES = "gen/samples"
GEN_COMPLETION_LEN = "gen/completion_len_mean"
GEN_TRUNCATED_FRAC = "gen/truncated_frac"
GEN_ZERO_VAR_GROUPS = "gen/zero_variance_groups"
GEN_ZERO_VAR_FRAC = "gen/zero_variance_frac"
GEN_TRAJECTORIES = "gen/trajectories"
GEN_SKIPPED_PROMPTS = "gen/skipped_prompts"

# --- perf/ ---
PERF_TOKENS_PER_S = "perf/tokens_per_s"
PERF_SAMPLES_PER_S = "perf/samples_per_s"
PERF_STALENESS = "perf/staleness"
PERF_STALENESS_MAX = "perf/staleness_max"
PERF_DROPPED_STALE = "perf/dropped_stale"
PERF_BATCH_TRAJECTORIES = "perf/batch_trajectories"
PERF_POLICY_VERSION = "perf/policy_version"
PERF_ROLLOUT_S = "perf/rollout_s"
PERF_UPDATE_S = "perf/update_s"
PERF_SYNC_S = "perf/sync_s"
PERF_EVAL_S = "perf/eval_s"
PERF_WAIT_S = "perf/wait_s"
PERF_LEARNER_TOKENS_PER_S = "perf/learner_tokens_per_s"
PERF_GEN_TOKENS_TOTAL = "perf/gen_tokens_total"
PERF_GEN_SAMPLES_TOTAL = "perf/gen_samples_total"
PERF_GENERATED_TRAJECTORIES_TOTAL = "perf/generated_trajectories_total"
PERF_TRAINED_TRAJECTORIES_TOTAL = "perf/trained_trajectories_total"
PERF_TRAIN_WALL_S = "perf/train_wall_s"
PERF_ROLLOUT_TASKS = "perf/rollout_tasks"
# Engine replicas (``engine.replicas`` > 1): written only then.
PERF_REPLICAS_ALIVE = "perf/replicas_alive"
PERF_REPLICAS_LOST_TOTAL = "perf/replicas_lost_total"
#: Per replica: ``replica_tag(i, name)`` for each name in ``REPLICA_TAG_NAMES``.
REPLICA_TAG_NAMES = {
    "requests": "engine calls this replica served, run total (retried calls count again)",
    "generated_tokens": "tokens this replica generated, run total",
    "busy_share": "share of the wall time since the last log this replica had calls in flight",
    "push_s": "wall seconds of the last weight push to this replica (load included)",
}


def replica_tag(index: int, name: str) -> str:
    """The tag of replica ``index``'s ``name`` (one of ``REPLICA_TAG_NAMES``)."""
    if name not in REPLICA_TAG_NAMES:
        raise ValueError(f"unknown replica tag {name!r}; known: {sorted(REPLICA_TAG_NAMES)}")
    return f"perf/replica_{index}/{name}"


def is_replica_tag(tag: str) -> bool:
    """Whether ``tag`` is a per-replica tag (``replica_tag``)."""
    group, _, rest = tag.partition("/")
    head, _, name = rest.partition("/")
    index = head.removeprefix("replica_")
    return group == "perf" and head != index and index.isdigit() and name in REPLICA_TAG_NAMES


# --- text (TensorBoard's text tab) ---
TEXT_TRAIN_SAMPLES = "train/samples"
TEXT_EVAL_SAMPLES = "eval/samples"
TEXT_TREES = "search/trees"

#: Tag -> what it means. Components may add tags (e.g. extra ``loss/`` terms of the learner).
TAGS: dict[str, str] = {
    TRAIN_REWARD_MEAN: "mean training (dense) reward of the sampled completions",
    TRAIN_REWARD_STD: "std of the training reward over the sampled completions",
    TRAIN_CORRECT_FRAC: "fraction of sampled completions whose answer is correct",
    TRAIN_FORMAT_OK_FRAC: "fraction of sampled completions ending in a well-formed, legal answer",
    TRAIN_BEST_REWARD_MEAN: "best-of-N: mean reward of the kept (best) completion",
    TRAIN_ADVANTAGE_ABS_MEAN: "CISPO: mean |advantage| of the kept completions",
    TRAIN_GRAD_NORM: "gradient norm before clipping (learner)",
    TRAIN_LR: "learning rate (learner)",
    TRAIN_KL: "k3 estimate of KL(pi || pi_ref) (learner)",
    TRAIN_CLIP_FRAC: "fraction of tokens whose importance weight was clipped (learner)",
    TRAIN_EPOCH: "passes over the training split so far (task sampler)",
    TRAIN_ENTROPY: "mean policy entropy over the loss tokens (learner)",
    TRAIN_RATIO_MEAN: "mean importance ratio pi / pi_behaviour (learner)",
    TRAIN_ADVANTAGE_MEAN: "mean advantage over the loss tokens (learner)",
    TRAIN_VALUE_MEAN: "mean V(s_t) over the completion tokens, value-only trajectories "
    "included (learner)",
    TRAIN_VALUE_REWARD_CORR: "Pearson correlation over the trained batch (value-only "
    "trajectories included) of each trajectory's mean V_old over its completion tokens with "
    "its reward, before the step trains on it: the value head's calibration; absent when "
    "either is constant (learner)",
    TRAIN_REWARD_MEAN_BATCH: "mean reward of the policy trajectories trained on (learner)",
    TRAIN_VALUE_ONLY_TRAJECTORIES: "value-only trajectories (Trajectory.value_only, e.g. "
    "MCTS's value_ends) that rode along with the batch and trained the value head (learner)",
    TRAIN_STALENESS_MEAN: "mean staleness as the learner saw it (learner)",
    TRAIN_SKIPPED_STEPS: "optimizer steps skipped for NaN/inf so far (learner)",
    EVAL_MEAN_AT_K: "mean@k on the test split: mean over problems of the fraction of k correct",
    EVAL_PASS_AT_K: "pass@k: fraction of problems with at least one of k samples correct",
    EVAL_MEAN_AT_K_CI95: "half-width of a 95% interval of mean@k over problems (1.96 SE)",
    EVAL_PASS_AT_K_CI95: "half-width of a 95% interval of pass@k over problems (1.96 SE)",
    EVAL_FORMAT_OK_FRAC: "eval: fraction of samples ending in a well-formed, legal answer",
    EVAL_REWARD_MEAN: "eval: mean sparse reward (equals mean@k for 0/1 rewards)",
    EVAL_COMPLETION_LEN: "eval: mean completion length in tokens",
    EVAL_NUM_PROBLEMS: "eval: number of test problems evaluated",
    LOSS_TOTAL: "weighted sum of the loss terms (learner)",
    LOSS_POLICY: "policy-gradient (CISPO) term (learner)",
    LOSS_VALUE: "value-head MSE term (learner)",
    LOSS_KL: "KL penalty term (learner)",
    SEARCH_TREE_SIZE: "MCTS: nodes per search tree",
    SEARCH_MAX_DEPTH: "MCTS: deepest node of the tree",
    SEARCH_DEPTH: "MCTS: steps of the chosen path taken from the tree",
    SEARCH_UNIQUE_CHILDREN: "MCTS: distinct children per expansion (of K samples)",
    SEARCH_ROOT_VISIT_ENTROPY: "MCTS: entropy (nats) of the root's visit distribution",
    SEARCH_TERMINAL_LEAF_FRAC: "MCTS: fraction of leaves that end the episode",
    SEARCH_CHOSEN_REWARD: "MCTS: reward of the emitted trajectory",
    SEARCH_BEST_REWARD_IN_TREE: "MCTS: best terminal reward in the tree",
    SEARCH_ROOT_VALUE: "MCTS: root W / N",
    SEARCH_BEST_MINUS_CHOSEN: "MCTS: best terminal reward in the tree - chosen reward",
    SEARCH_FINISHED_BY_SAMPLING: "MCTS: share of chosen paths finished by a policy sample",
    SEARCH_VALUE_REWARD_CORR: "MCTS: Pearson r of V(s) on the chosen paths with their reward",
    SEARCH_VALUE_ENDS: "MCTS: value-only trajectories per search to other ends of the tree "
    "(MCTSConfig.value_ends)",
    SEARCH_VALUE_ABS_ERR: "MCTS: mean |V(s) - reward| over the chosen paths' expanded nodes",
    SEARCH_COLLISIONS: "MCTS: waits on a node another worker was expanding",
    SEARCH_TERMINAL_WAITS: "MCTS: waits after a terminal visit for other workers' paths",
    SEARCH_ENGINE_TIME_S: "MCTS: seconds awaiting the engine (summed over workers)",
    SEARCH_OVERHEAD_TIME_S: "MCTS: seconds of search code between awaits",
    SEARCH_PRUNED_FRAC: "MCTS: share of distinct sampled steps pruned for a failed env check",
    SEARCH_PREFIX_CACHE_HIT: "MCTS: share of the expansions' prefix tokens served by the prefix cache",
    GEN_TOKENS: "tokens generated by the engine during the rollout (MCTS: every sampled step)",
    GEN_SAMPLES: "completions sampled during the rollout (MCTS: every sampled step)",
    GEN_COMPLETION_LEN: "mean sampled completion length in tokens",
    GEN_TRUNCATED_FRAC: "fraction of samples cut off by max_tokens",
    GEN_ZERO_VAR_GROUPS: "CISPO groups dropped: one reward for all",
    GEN_ZERO_VAR_FRAC: "CISPO: fraction of groups dropped for zero reward variance",
    GEN_TRAJECTORIES: "trajectories the rollout handed to the buffer",
    GEN_SKIPPED_PROMPTS: "tasks skipped because the prompt did not fit the engine's context",
    PERF_TOKENS_PER_S: "generated tokens per second of rollout wall time",
    PERF_SAMPLES_PER_S: "sampled completions per second of rollout wall time",
    PERF_STALENESS: "mean (learner version - trajectory policy version) in the batch",
    PERF_STALENESS_MAX: "max staleness in the batch",
    PERF_DROPPED_STALE: "trajectories dropped so far for exceeding max_staleness",
    PERF_BATCH_TRAJECTORIES: "trajectories in the batch (batch_size, more with train_expiring)",
    PERF_POLICY_VERSION: "weight pushes of the run so far (survives resume)",
    PERF_ROLLOUT_S: "wall seconds of the last agent.collect",
    PERF_UPDATE_S: "wall seconds of the learner step",
    PERF_SYNC_S: "wall seconds of the weight push",
    PERF_EVAL_S: "wall seconds of the evaluation",
    PERF_WAIT_S: "wall seconds the learner waited for rollouts",
    PERF_LEARNER_TOKENS_PER_S: "tokens (prompt + completion) the learner processed per second",
    PERF_GEN_TOKENS_TOTAL: "tokens generated since the run began (the max_gen_tokens budget)",
    PERF_GEN_SAMPLES_TOTAL: "completions sampled since the run began",
    PERF_GENERATED_TRAJECTORIES_TOTAL: "trajectories rollouts handed to the buffer, run total",
    PERF_TRAINED_TRAJECTORIES_TOTAL: "trajectories the learner trained on, run total "
    "(generated - trained = waste: dropped, still buffered or never used)",
    PERF_TRAIN_WALL_S: "wall seconds of the training loop since the run began, evaluation excluded",
    PERF_ROLLOUT_TASKS: "mean tasks per rollout (async mode sizes rollouts to need)",
    PERF_REPLICAS_ALIVE: "engine replicas in the rotation (engine.replicas > 1)",
    PERF_REPLICAS_LOST_TOTAL: "engine replicas that died during the run (killed, out of memory)",
    TEXT_TRAIN_SAMPLES: "text: a few training transcripts with their rewards",
    TEXT_EVAL_SAMPLES: "text: a few evaluation transcripts",
    TEXT_TREES: "text: search tree pages saved under the run's trees/ (MCTS tree_every), "
    "each with its nodes, best terminal reward and chosen reward",
}

#: Tags a training run always writes (the end-to-end tests check these).
CORE_TRAIN_TAGS = (
    TRAIN_REWARD_MEAN,
    EVAL_MEAN_AT_K,
    EVAL_PASS_AT_K,
    EVAL_FORMAT_OK_FRAC,
    PERF_TOKENS_PER_S,
    PERF_SAMPLES_PER_S,
    PERF_STALENESS,
    PERF_POLICY_VERSION,
)


def check_tag(tag: str) -> str:
    """Return ``tag`` if it is ``group/name`` with a known group, else raise ValueError."""
    group, sep, name = tag.partition("/")
    if not sep or not name or group not in GROUPS:
        raise ValueError(
            f"TensorBoard tag {tag!r} must be 'group/name' with group in {list(GROUPS)}"
        )
    return tag


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """A (nested) dataclass or mapping as ``{"section.key": value}`` for the hparams table."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        items: Iterable[tuple[str, Any]] = (
            (f.name, getattr(config, f.name)) for f in dataclasses.fields(config)
        )
    elif isinstance(config, Mapping):
        items = config.items()
    else:
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        if (dataclasses.is_dataclass(value) and not isinstance(value, type)) or isinstance(
            value, Mapping
        ):
            flat.update(flatten_config(value, name) or {name: {}})
        else:
            flat[name] = value
    return flat


def config_to_dict(config: Any) -> Any:
    """A dataclass tree as plain YAML-safe Python (tuples become lists, paths strings)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {str(k): config_to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    if isinstance(config, Path):
        return str(config)
    return config


class TensorBoardLogger:
    """Writes scalars, text samples, the hyperparameter table and ``config.yaml`` to a run dir.

    Args:
        run_dir: Directory of the run (``runs/{env}__{agent}__{seed}__{time}``); created.
        config: The run's configuration (dataclass tree or mapping). Logged as a Markdown
            table under the ``hyperparameters`` text tag (CleanRL style) and saved as
            ``config.yaml`` beside the event files, when given.
        purge_step: On resume, the step to continue from: events at or after it left by an
            interrupted run are hidden by TensorBoard.
    """

    def __init__(
        self, run_dir: str | Path, config: Any = None, *, purge_step: int | None = None
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter  # heavy import, only when logging

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge_step)
        if config is not None:
            self.log_config(config)

    def log_config(self, config: Any) -> None:
        """Hyperparameter table (text tab) and ``config.yaml`` beside the events."""
        import yaml

        flat = flatten_config(config)
        rows = "\n".join(f"|{k}|{_cell(v)}|" for k, v in flat.items())
        self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{rows}", 0)
        with open(self.run_dir / "config.yaml", "w") as f:
            yaml.safe_dump(config_to_dict(config), f, sort_keys=False)

    def log_scalars(self, metrics: Mapping[str, float], step: int) -> None:
        """One scalar per tag; non-finite values are skipped (TensorBoard would plot junk)."""
        for tag, value in metrics.items():
            check_tag(tag)
            value = float(value)
            if math.isfinite(value):
                self.writer.add_scalar(tag, value, step)

    def log_text(self, tag: str, texts: Iterable[str], step: int) -> None:
        """Sample transcripts as one text entry (code blocks keep the formatting)."""
        check_tag(tag)
        body = "\n\n".join(f"```\n{t}\n```" for t in texts)
        if body:
            self.writer.add_text(tag, body, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cell(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return text.replace("|", "\\|")
