"""The run configuration: one ``TrainConfig`` composed of the per-component dataclasses.

A YAML preset (``configs/tiny_cpu.yaml``) holds run fields at top level and one section per
component; command-line overrides come after it::

    agent: cispo               # run fields
    env_id: Countdown-v0
    total_steps: 20
    engine: {...}              # EngineConfig
    learner: {lr: 1.0e-4}      # LearnerConfig
    eval: {k: 4}               # EvalConfig
    mcts: {...}                # MCTSConfig  } only the section of the chosen agent is
    cispo: {...}               # CISPOConfig } built; the others are checked for unknown
    bon: {...}                 # BestOfNConfig } keys only

    --total_steps 50 --learner.lr 3e-4 --cispo.group_size 16 --env_kwargs.reward sparse

An agent of your own is ``--agent my_module:MyAgent``; its section is named after the class's
``name``. Loading happens in two stages, both before anything expensive (engine start, model
load): parsing and validating the dataclasses is pure (no torch, transformers or vLLM import,
no file read besides the preset), so a bad value is refused at once; then ``load_config``
checks what needs the outside world (``TrainConfig.check_resources``: the env builds and fits
the agent, the model exists, ``holdout`` fits the data). Every problem raises ``ConfigError``:
ONE line naming the field (for a former field that a config class lists in its ``RENAMED``,
the field that took its place: ``MCTSConfig.RENAMED``).
"""

from __future__ import annotations

import dataclasses
import os
import time
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from langrl.agents import AGENT_SPECS, AgentSpecError, agent_class
from langrl.agents.evaluation import EvalConfig
from langrl.checks import check_int
from langrl.distributed.config import ClusterConfig
from langrl.engine.config import EngineConfig, model_source_error
from langrl.learner.config import LearnerConfig

#: Sections of a config file besides the agents'.
COMPONENT_SECTIONS: dict[str, type] = {
    "engine": EngineConfig,
    "cluster": ClusterConfig,
    "learner": LearnerConfig,
    "eval": EvalConfig,
}
#: ``EngineConfig.model`` until the tiny default policy is resolved (``model: null``).
DEFAULT_MODEL = "langrl:tiny-default"
#: The preset ``scripts/train_agent.py`` loads when no ``--config`` is given.
DEFAULT_PRESET = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml"


class ConfigError(ValueError):
    """A one-line configuration error naming the offending field."""


@dataclass
class TrainConfig:
    """Everything one training run needs; ``load_config`` builds and validates it.

    Constructing it checks the values (pure, no I/O); ``check_resources`` checks the env,
    the model and the data (``load_config`` and ``train`` call it)."""

    # --- what to train ---
    agent: str = "mcts"
    """Agent: ``mcts`` (tree-search distillation), ``cispo``, ``bon`` (best-of-N), or an
    agent class of your own as ``module:ClassName`` (see ``langrl.agents.base.Agent``)."""
    env_id: str = "Countdown-v0"
    """Env id: langrl's ``Countdown-v0`` or ``GSM8K-v0``, an id registered by a module
    imported before, or Gymnasium's ``module:EnvId-v0`` (imports ``module``, which registers
    it). Checked for the agent's needs before anything starts (``check_env``)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """``gym.make`` keyword arguments of the TRAINING env (``split`` is forced to ``train``;
    ``reward`` defaults to ``dense``). Evaluation uses ``eval.split`` / ``eval.reward``."""
    model: str | None = None
    """Initial policy: a local directory (``from_pretrained``-loadable, e.g. a checkpoint) or
    a Hugging Face name such as ``Qwen/Qwen2.5-1.5B-Instruct`` (in the local cache, or on the
    hub when online). ``None`` = the tiny default policy (``langrl.tiny.ensure_policy()``)."""

    # --- loop ---
    total_steps: int = 20
    """Gradient steps to train for (the step counter survives ``resume``); with
    ``max_gen_tokens`` an upper bound."""
    max_gen_tokens: int | None = None
    """Generation budget: stop (final sync, evaluation and checkpoint, as at ``total_steps``)
    after the first gradient step at which the tokens generated so far reach it, and submit
    no rollout once they have, so agents can be compared at matched generation cost. Tokens
    are counted as the agent reports them (``gen/tokens``: every sampled token, search
    included), else the trained completions' lengths; the count survives ``resume``
    (``perf/gen_tokens_total``). ``None`` (default) = no budget, only ``total_steps``."""
    batch_size: int = 16
    """Trajectories per gradient step (paper: 32)."""
    tasks_per_rollout: int | None = None
    """Tasks handed to one ``agent.collect`` (async mode: at most this many, fewer when fewer
    are needed); ``None`` = the agent config's ``num_prompts`` when it has one (CISPO,
    best-of-N), else ``batch_size`` (MCTS: one trajectory per task)."""
    mode: str = "async"
    """``async``: the next rollout is generated while the learner trains on the current batch
    (off by at most ``max_staleness`` versions), sized by the ``RolloutPlanner`` to what the
    steps up to the end of the NEXT sync window still need. ``sync``: generate a full rollout
    whenever the buffer cannot fill a batch, then train, in turn (debugging). Both modes
    repeat exactly for a given ``seed`` on one machine and resume exactly from a periodic
    checkpoint (docs/design.md, "Reproducibility")."""
    sync_every: int = 1
    """Push learner weights to the engine every N gradient steps (paper: 8)."""
    max_staleness: int | None = 1
    """Largest accepted ``policy version at training - version that sampled``; older
    trajectories are dropped (counted in ``perf/dropped_stale``). ``None`` = no bound."""
    train_expiring: bool = True
    """Async mode: the step before a weight push also trains the buffered trajectories that
    the push would make too stale (``max_staleness``), so its batch can exceed
    ``batch_size`` (at most twice it; any beyond are dropped). A rollout's yield is random
    (CISPO drops zero-variance groups), so sizing alone cannot avoid a surplus. False keeps
    every batch at exactly ``batch_size``."""
    max_empty_rollouts: int = 20
    """Stop with an error after this many consecutive rollouts that produced no trajectory
    (CISPO drops zero-variance groups; a policy that always earns the same reward would
    otherwise spin forever)."""
    buffer_capacity: int = 4096
    """Most trajectories waiting in the buffer; the oldest are dropped beyond it."""

    # --- evaluation, logging, checkpoints ---
    eval_every: int = 10
    """Evaluate mean@k every N steps (and always at the start and the end); 0 = only then."""
    eval_every_tokens: int | None = None
    """Also evaluate (and checkpoint) each time the generated tokens cross a multiple of
    this, so that runs of agents that spend very different tokens per step (CISPO vs MCTS)
    get curves with points at the same costs. ``None`` (default) = by steps only."""
    eval_at_start: bool = True
    """Evaluate the initial policy before the first step."""
    holdout: int = 0
    """Hold out the LAST ``holdout`` problems of the train split: the agent never sees them
    (the task sampler covers the first ``size - holdout``), so ``eval.split: train`` with
    ``eval.first_problem: -holdout`` measures a validation score on problems the policy never
    trained on (choose settings there, not on the test set). 0 (default) = train on the
    whole split. Must be smaller than the split. Every evaluation is also appended to
    ``run_dir/eval_history.csv`` (step, generated tokens, wall time, scores)."""
    early_stopping_patience: int = 0
    """End the run (final push, checkpoint) at the evaluation that makes this many in a row
    without a gain: none raised the best ``mean_at_k`` of the run so far (the evaluation at
    the start included) by more than ``early_stopping_threshold``. The count is read from
    ``eval_history.csv``, so it survives ``resume``. Needs evaluations during the run
    (``eval_every`` or ``eval_every_tokens``). 0 (default) = off: only ``total_steps`` and
    ``max_gen_tokens`` end the run. ``configs/reproduce.yaml``'s plateau rows use 3."""
    early_stopping_threshold: float = 0.0
    """Smallest rise of the best ``mean_at_k`` (a fraction: 0.01 is one point) that counts
    as a gain for ``early_stopping_patience``; >= 0."""
    log_every: int = 1
    """Write scalars every N steps."""
    text_every: int = 10
    """Write sample transcripts to TensorBoard's text tab every N steps; 0 = never."""
    checkpoint_every: int = 10
    """Save a checkpoint every N steps (and always at the end and on Ctrl-C); 0 = only then.
    A periodic save that fails (a full disk) logs one warning and training goes on (the
    previous checkpoint stays; the next save tries again); a failing final or Ctrl-C save
    raises ``CheckpointError``."""
    keep_last: int | None = None
    """Keep only the newest N checkpoints of the run (by step), removing older ones after
    each successful save; the one just written and the one ``latest`` names are never
    removed. ``None`` (default) = keep all (e.g. to evaluate intermediate checkpoints). Use
    2 or more to leave ``resume`` a previous checkpoint to fall back to when the newest is
    found truncated or corrupt."""
    runs_root: str = "runs"
    """Parent directory of run directories."""
    run_dir: str | None = None
    """This run's directory; ``None`` = ``{runs_root}/{env}__{agent}__{seed}__{time}`` (or,
    with ``resume``, the newest such directory that holds a checkpoint)."""
    seed: int = 0
    """Seeds the task order, the Python/NumPy/torch RNGs, every engine request (each task
    is handed out with a seed from this, its epoch and its position in the order, for
    agents that declare ``task_seeds``; an agent config's ``seed`` is mixed in when set)
    and the evaluations (``eval.seed`` unless set). The engine's own RNG (``engine.seed``)
    serves only unseeded requests."""
    resume: bool = False
    """Continue from the last checkpoint of ``run_dir``: same global step, optimizer state,
    data position and RNG state."""
    progress: bool = True
    """Show tqdm progress bars."""

    # --- components ---
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(model=DEFAULT_MODEL))
    """Policy server (``langrl.engine.EngineConfig``); its ``model`` always follows the run's
    ``model`` (``DEFAULT_MODEL`` stands for the tiny policy until it is resolved)."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Where engine replicas (``engine.replicas``) and learner ranks
    (``learner.world_size``) run (``langrl.distributed.ClusterConfig``): by default no Ray
    while both are 1, else a local Ray instance started and stopped with the run."""
    learner: LearnerConfig | None = None
    """The shared learner (``langrl.learner.LearnerConfig``): lr, eps_high, c_value, c_kl.
    ``None`` = its defaults with the agent's ``learner_defaults`` applied (CISPO: no value
    head). ``load_config`` applies those to every key the user did not set."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation (``langrl.agents.evaluation.EvalConfig``): mean@k, temperature, problems."""
    agent_config: Any = None
    """The chosen agent's config (the YAML section named after the agent); built by
    ``load_config``; ``None`` = its defaults."""

    def __post_init__(self) -> None:
        try:
            cls = agent_class(self.agent)
        except AgentSpecError as err:
            raise ConfigError(f"config: agent: {err}") from None
        if self.agent_config is None:
            self.agent_config = cls.config_class()
        elif not isinstance(self.agent_config, cls.config_class):
            raise ConfigError(
                f"config: {cls.name}: expected a {cls.config_class.__name__}, "
                f"got {type(self.agent_config).__name__}"
            )
        if self.learner is None:
            self.learner = LearnerConfig(**cls.learner_defaults(self.agent_config))
        if self.engine.model != (self.model or DEFAULT_MODEL):
            self.engine = dataclasses.replace(self.engine, model=self.model or DEFAULT_MODEL)
        lows = {
            "total_steps": 1, "batch_size": 1, "sync_every": 1, "buffer_capacity": 1,
            "max_empty_rollouts": 1, "log_every": 1, "eval_every": 0, "text_every": 0,
            "checkpoint_every": 0, "holdout": 0, "early_stopping_patience": 0,
        }  # fmt: skip
        optional = {
            "eval_every_tokens": 1, "max_gen_tokens": 1, "tasks_per_rollout": 1, "keep_last": 1,
        }  # fmt: skip
        try:
            for name, low in lows.items():
                check_int("TrainConfig", name, getattr(self, name), low)
            for name, low in optional.items():
                check_int("TrainConfig", name, getattr(self, name), low, optional=True)
            check_int("TrainConfig", "max_staleness", self.max_staleness, 0, optional=True)
        except ValueError as err:
            raise ConfigError(f"config: {str(err).removeprefix('TrainConfig.')}") from None
        if not self.early_stopping_threshold >= 0:
            raise ConfigError(
                f"config: early_stopping_threshold: must be >= 0, "
                f"got {self.early_stopping_threshold}"
            )
        if self.early_stopping_patience and not (self.eval_every or self.eval_every_tokens):
            raise ConfigError(
                "config: early_stopping_patience: needs evaluations during the run "
                "(eval_every or eval_every_tokens), both are off"
            )
        if self.mode not in ("async", "sync"):
            raise ConfigError(f"config: mode: must be 'async' or 'sync', got {self.mode!r}")
        if self.mode == "async" and self.max_staleness == 0:
            raise ConfigError(
                "config: max_staleness: 0 drops every rollout generated during an update in "
                "async mode; use mode=sync for on-policy training or max_staleness >= 1"
            )
        if self.buffer_capacity < self.batch_size:
            raise ConfigError(
                f"config: buffer_capacity: {self.buffer_capacity} is smaller than "
                f"batch_size {self.batch_size}"
            )
        if not isinstance(self.env_id, str) or not self.env_id:
            raise ConfigError(
                f"config: env_id: must be an env id such as Countdown-v0, got {self.env_id!r}"
            )
        if not isinstance(self.env_kwargs, Mapping):
            raise ConfigError(f"config: env_kwargs: must be a mapping, got {self.env_kwargs!r}")

    # --- checks that read the outside world (env, data, model) ---

    def check_resources(self) -> None:
        """The env builds and fits the agent and evaluation, the model exists, ``holdout``
        and a train-split evaluation fit the data: ``ConfigError`` (one line) otherwise.
        Reads the env's local data (small) and the model's ``config.json``; starts nothing."""
        check_env(
            self.env_id,
            self.env_kwargs,
            uses=self.agent_class.env_uses,
            user=f"agent {self.agent_name}",
            evaluation=self.eval,
        )
        if self.model is not None:
            check_model(self.model)
        self._check_holdout()
        self._check_cluster()

    def _check_cluster(self) -> None:
        """Ray is installed when the run needs it, and a local instance has the CPUs and
        GPUs the replicas and ranks reserve (a cluster to join is checked once joined)."""
        replicas, ranks = self.engine.replicas, self.learner.world_size
        if not self.cluster.uses_ray(replicas, ranks):
            return
        from langrl.distributed import cluster as ray_cluster

        why = (
            f"engine.replicas={replicas}" if replicas > 1
            else f"learner.world_size={ranks}" if ranks > 1
            else f"cluster.address={self.cluster.address!r}"
        )  # fmt: skip
        try:
            ray_cluster.require_ray(why)
            if self.cluster.joins:  # its resources are checked once joined
                ray_cluster.check_reachable(self.cluster)
            else:
                gpus = ray_cluster.local_gpus() > 0
                ray_cluster.check_demand(self.cluster, self.ray_demand(gpus))
        except ray_cluster.ClusterError as err:
            raise ConfigError(f"config: {err}") from None

    def ray_demand(self, gpus: bool) -> dict[str, tuple[float, float]]:
        """``{setting: (CPUs, GPUs)}`` the run reserves in Ray: every engine replica's and,
        with ``learner.world_size`` > 1, every learner rank's. ``gpus``: whether the
        cluster has GPUs (each replica then takes ``tensor_parallel_size`` of them)."""
        demand = {"engine.replicas": self.engine.ray_demand(gpus)}
        if self.learner.world_size > 1:
            demand["learner.world_size"] = self.learner.ray_demand()
        return demand

    def _check_holdout(self) -> None:
        """``holdout`` leaves problems to train on, and a train-split evaluation reads only
        held-out ones."""
        if not self.holdout and self.eval.split != "train":
            return
        size = self.train_split_size()
        trained = size - self.holdout
        if trained < 1:
            raise ConfigError(
                f"config: holdout: {self.holdout} leaves nothing to train on in the "
                f"{size}-problem train split"
            )
        if self.eval.split == "train":
            try:
                start = self.eval.first_index(size)
            except ValueError as err:
                raise ConfigError(f"config: eval.first_problem: {err}") from None
            if start < trained:
                hint = f" (e.g. {-self.holdout})" if self.holdout else ""
                raise ConfigError(
                    f"config: eval.first_problem: evaluating train problems from {start} on "
                    f"overlaps the trained ones [0, {trained}); evaluate held-out problems, "
                    f"eval.first_problem >= {trained}{hint}, or set holdout >= {size - start}"
                )

    # --- derived ---

    @property
    def agent_class(self) -> type:
        """The agent class ``agent`` names (its module is imported already)."""
        return agent_class(self.agent)

    @property
    def agent_name(self) -> str:
        """The agent class's ``name``: its config section and the run directory's name."""
        return str(self.agent_class.name)

    def train_split_size(self) -> int:
        """Problems in the training env's split (builds the env: it loads its local data)."""
        from langrl.envs import make_env

        return make_env(self.env_id, self.train_env_kwargs).num_tasks()

    @property
    def rollout_tasks(self) -> int:
        """Tasks per ``agent.collect`` (see ``tasks_per_rollout``)."""
        if self.tasks_per_rollout is not None:
            return self.tasks_per_rollout
        return int(getattr(self.agent_config, "num_prompts", self.batch_size))

    @property
    def train_env_kwargs(self) -> dict[str, Any]:
        """``env_kwargs`` of the training env (train split, dense reward unless set)."""
        return {"reward": "dense", **self.env_kwargs, "split": "train"}

    def run_name(self, now: float | None = None) -> str:
        """``{env}__{agent}__{seed}__{time}`` (CleanRL's run naming)."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
        return f"{self.env_id}__{self.agent_name}__{self.seed}__{stamp}"

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-safe dict, with the agent's section under its name (``load_config``
        reads it back)."""
        from langrl.metrics import config_to_dict

        data = {
            f.name: config_to_dict(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name != "agent_config"
        }
        data["engine"].pop("model", None)  # follows the run's model
        data[self.agent_name] = config_to_dict(self.agent_config)
        return data


# --- loading ---


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    **fields: Any,
) -> TrainConfig:
    """Build a validated ``TrainConfig`` from a YAML preset, overrides and keyword fields,
    then check the env, model and data it names (``TrainConfig.check_resources``).

    Args:
        path: YAML preset (``None`` = no file; all defaults).
        overrides: ``["--key", "value", "--section.key", "value", ...]`` (as on the command
            line; ``--key=value`` works too) or a mapping ``{"section.key": value}``. Values
            are parsed for the field's type (``1e-4`` for a float, ``null``/``none`` for None,
            ``true``/``false``, YAML lists/dicts).
        **fields: Run fields set last (e.g. ``agent="cispo"`` from ``--agent``).

    Raises:
        ConfigError: one line naming the field, before any engine or model is started.
    """
    config = parse_config(path, overrides, **fields)
    config.check_resources()
    return config


def parse_config(
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    **fields: Any,
) -> TrainConfig:
    """``load_config`` without ``check_resources``: parsing and value checks only (pure,
    fast; the preset is the only file read)."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(path)
    pairs = list(overrides.items()) if isinstance(overrides, Mapping) else _parse_argv(overrides)
    pairs += [(k, v) for k, v in fields.items() if v is not None]
    agent = next((v for k, v in reversed(pairs) if k == "agent"), data.get("agent"))
    data = apply_per_agent(data, agent if agent is not None else TrainConfig.agent)
    explicit: set[str] = set(_dotted_keys(data))
    for key, value in pairs:
        _set_dotted(data, key, value)
        explicit.add(key)
    return build_config(data, explicit)


#: Preset key whose sections hold settings for one agent only (see ``apply_per_agent``).
PER_AGENT_KEY = "per_agent"


def apply_per_agent(data: Mapping[str, Any], agent: str) -> dict[str, Any]:
    """``data`` without its ``per_agent`` section, with ``per_agent[agent]`` merged in.

    One preset can then compare agents that need different run or learner settings (a
    matched token budget gives best-of-N 40 gradient steps and CISPO 500, so they may want
    different learning rates)::

        learner: {lr: 2.0e-5}
        per_agent:
          bon: {learner: {lr: 1.0e-4}, batch_size: 16}

    Sections merge key by key; command-line overrides still win (``load_config`` applies
    them afterwards). Keys are built-in agent names or the chosen agent's own spec.
    """
    data = dict(data)
    sections = data.pop(PER_AGENT_KEY, None)
    if sections is None:
        return data
    if not isinstance(sections, Mapping):
        raise ConfigError(f"config: {PER_AGENT_KEY}: must map agent names to sections")
    known = set(_field_types(TrainConfig)) | set(COMPONENT_SECTIONS) | set(AGENT_SPECS)
    for name, section in sections.items():
        if name not in AGENT_SPECS and name != agent:
            raise ConfigError(
                f"config: {PER_AGENT_KEY}.{name}: unknown agent; valid agents: "
                f"{', '.join(AGENT_SPECS)}"
            )
        if not isinstance(section, Mapping):
            raise ConfigError(f"config: {PER_AGENT_KEY}.{name}: must be a section (mapping)")
        for key in section:
            if key in ("agent", "agent_config") or key not in known:
                raise ConfigError(
                    f"config: {PER_AGENT_KEY}.{name}.{key}: not a run field or section "
                    "that can be set per agent"
                )
    return _merged(data, sections.get(agent) or {})


def _merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, mappings key by key (a deep update)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def build_config(data: Mapping[str, Any], explicit: set[str] | None = None) -> TrainConfig:
    """``TrainConfig`` from a nested mapping (a parsed preset with overrides applied); values
    are checked, the outside world is not (see ``TrainConfig.check_resources``).

    ``explicit`` lists the dotted keys the user set; every key of the agent's
    ``learner_defaults`` applies unless ``learner.<key>`` is among them.
    """
    data = dict(data)
    explicit = set(_dotted_keys(data)) if explicit is None else explicit
    run_types = _field_types(TrainConfig)
    run: dict[str, Any] = {}
    agent_spec = data.get("agent", TrainConfig.agent)
    if "agent" in data:
        run["agent"] = agent_spec = _coerce("agent", str, agent_spec)
    try:
        cls = agent_class(agent_spec)
    except AgentSpecError as err:
        raise ConfigError(f"config: agent: {err}") from None
    name = str(cls.name)
    sections = set(COMPONENT_SECTIONS) | set(AGENT_SPECS) | {name}
    for key in data:
        if key not in run_types and key not in sections or key == "agent_config":
            raise ConfigError(
                f"config: unknown key {key!r}; run fields: "
                f"{', '.join(k for k in run_types if k not in COMPONENT_SECTIONS and k != 'agent_config')}; "
                f"sections: {', '.join(sorted(sections))}"
            )
    for key, value in data.items():
        if key in sections or key == "agent":
            continue
        run[key] = _coerce(key, run_types[key], value)
    # Unused built-in agent sections are still checked for unknown keys (typos in a shared
    # preset); importing their modules is cheap and torch-free.
    for other in AGENT_SPECS:
        if other in data and other != name:
            try:
                other_cls = agent_class(other)
            except AgentSpecError:
                continue
            _check_section_keys(other, other_cls.config_class, data[other])
    run["agent_config"] = _build_section(name, cls.config_class, _section(name, data.get(name)))
    learner_section = dict(_section("learner", data.get("learner")))
    for key, value in cls.learner_defaults(run["agent_config"]).items():
        if f"learner.{key}" not in explicit:
            learner_section[key] = value
    run["learner"] = _build_section("learner", LearnerConfig, learner_section)
    engine_section = dict(_section("engine", data.get("engine")))
    if "model" in engine_section:
        raise ConfigError("config: engine.model: set the run's model instead (--model or 'model:')")
    engine_section["model"] = run.get("model") or DEFAULT_MODEL
    run["engine"] = _build_section("engine", EngineConfig, engine_section)
    run["eval"] = _build_section("eval", EvalConfig, _section("eval", data.get("eval")))
    run["cluster"] = _build_section(
        "cluster", ClusterConfig, _section("cluster", data.get("cluster"))
    )
    try:
        return TrainConfig(**run)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"config: {_one_line(err)}") from None


# --- checks of the outside world ---


def check_env(
    env_id: str,
    env_kwargs: Mapping[str, Any],
    *,
    uses: Sequence[str] = ("rollouts",),
    user: str = "evaluation",
    evaluation: EvalConfig | None = None,
) -> None:
    """The env exists, its kwargs construct it, and it fits its use; one line otherwise.

    ``env_id`` is a registered id (langrl's, or one registered by a module imported before)
    or Gymnasium's ``module:EnvId-v0``, which imports ``module`` first (it registers the
    env). The training env (``split="train"``) must have the members of
    ``langrl.envs.base.CONTRACT_MEMBERS`` named by ``uses`` (an agent's ``env_uses``) and
    reset info with ``prompt`` and ``messages``; with ``evaluation``, the env must also
    construct with the kwargs evaluation uses (``EvalConfig.env_kwargs_over``: its split,
    reward, e.g. the ``sparse`` preset, and env_kwargs over ``env_kwargs``). ``user`` names
    the one who needs it in the error. Cheap: the envs load small local data on first use.
    """
    import importlib

    import gymnasium as gym

    import langrl  # noqa: F401  (registers the envs)
    from langrl.envs.base import contract_problems

    if not isinstance(env_id, str) or not env_id:
        raise ConfigError(f"config: env_id: must be an env id such as Countdown-v0, got {env_id!r}")
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001  (ImportError or the module's own error)
            raise ConfigError(
                f"config: env_id: cannot import module {module!r} of {env_id!r}: "
                f"{type(err).__name__}: {_one_line(err)}"
            ) from None
    if name not in gym.registry:
        langrl_envs = sorted(
            k
            for k, spec in gym.registry.items()
            if isinstance(spec.entry_point, str) and spec.entry_point.startswith("langrl.")
        )
        where = f" (module {module!r} did not register it)" if module else ""
        raise ConfigError(
            f"config: env_id: unknown env {env_id!r}{where}; langrl envs: "
            f"{', '.join(langrl_envs)}; an env of your own: module:EnvId-v0 (Gymnasium's "
            "convention: the module registers the id on import)"
        )
    if not isinstance(env_kwargs, Mapping):
        raise ConfigError(f"config: env_kwargs: must be a mapping, got {env_kwargs!r}")
    try:
        env = gym.make(env_id, **{**env_kwargs, "split": "train"})
    except Exception as err:  # noqa: BLE001  (any constructor error is a config error)
        raise ConfigError(
            f"config: env_kwargs: {env_id} rejects {dict(env_kwargs)} (with split='train'): "
            f"{_one_line(err)}"
        ) from None
    try:
        problems = contract_problems(env, tuple(uses))
    finally:
        env.close()
    if problems:
        raise ConfigError(
            f"config: env_id: {env_id} does not fit {user}: {'; '.join(problems)} (see "
            "the env contract in langrl.envs.base: subclass ReasoningEnv or provide these)"
        )
    if evaluation is not None:
        overrides = evaluation.env_kwargs
        try:
            gym.make(env_id, **evaluation.env_kwargs_over(env_kwargs)).close()
        except Exception as err:  # noqa: BLE001
            field_name = "eval.env_kwargs" if overrides else "eval.reward"
            raise ConfigError(
                f"config: {field_name}: {env_id} cannot be built for evaluation with "
                f"split={evaluation.split!r}, reward={evaluation.reward!r}"
                + (f", {overrides}" if overrides else "")
                + f" (evaluation needs a 0/1 'sparse' reward preset): {_one_line(err)}"
            ) from None


def check_model(model: str) -> None:
    """``model`` is loadable: a local ``from_pretrained`` directory, or a Hugging Face name in
    the local cache or (online) on the hub. One line, before any engine or download starts;
    the engines make the same check (``langrl.engine.config.model_source_error``)."""
    problem = model_source_error(model)
    if problem is not None:
        raise ConfigError(f"config: model: {problem}")


# --- parsing helpers ---


#: Preset key naming another preset (a path relative to this one) that this one extends.
EXTENDS_KEY = "extends"


def _read_yaml(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A preset as a mapping, its ``extends:`` base (recursively) merged under it."""
    path = Path(path)
    if not path.is_file():
        what = f"{_chain[-1]}: extends" if _chain else "--config"
        raise ConfigError(f"config: {what}: file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config: {path}: invalid YAML: {_one_line(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path}: top level must be a mapping, got {type(data).__name__}")
    base = data.pop(EXTENDS_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config: {path}: extends: must be a preset path, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in (*_chain, path.resolve()):
        raise ConfigError(f"config: {path}: extends: {base!r} extends itself (a cycle)")
    return _merged(_read_yaml(base_path, (*_chain, path.resolve())), data)


def _parse_argv(argv: Sequence[str]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    i = 0
    argv = list(argv)
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or len(token) == 2:
            raise ConfigError(f"config: expected --key value, got {token!r}")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
            i += 2
        else:
            value = "true"  # a bare flag: --resume
            i += 1
        pairs.append((key.replace("-", "_"), value))
    return pairs


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    head, dot, rest = key.partition(".")
    if not dot:
        data[head] = value
        return
    section = data.get(head)
    if section is None:
        section = data[head] = {}
    if not isinstance(section, dict):
        raise ConfigError(f"config: {head}: cannot set {key!r}, {head} is not a section")
    _set_dotted(section, rest, value)


def _dotted_keys(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        keys.append(name)
        if isinstance(value, Mapping):
            keys += _dotted_keys(value, name + ".")
    return keys


def _section(name: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"config: {name}: must be a section (mapping), got {value!r}")
    return value


def _check_section_keys(name: str, cls: type, values: Any) -> None:
    """Refuse keys that are not fields of ``cls``. A class may name its former fields in a
    ``RENAMED`` class attribute (old key -> where its setting went, one line), which the
    error then gives instead of the list of known fields."""
    known = _field_types(cls)
    renamed: Mapping[str, str] = getattr(cls, "RENAMED", {})
    for key in _section(name, values):
        if key not in known and key in renamed:
            raise ConfigError(
                f"config: {name}.{key}: no longer a field of {cls.__name__}; {renamed[key]}"
            )
        if key not in known:
            raise ConfigError(
                f"config: {name}.{key}: unknown field of {cls.__name__}; known: {', '.join(known)}"
            )


def _build_section(name: str, cls: type, values: Mapping[str, Any]) -> Any:
    _check_section_keys(name, cls, values)
    types_ = _field_types(cls)
    kwargs = {key: _coerce(f"{name}.{key}", types_[key], value) for key, value in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"config: {name}: {_one_line(err)}") from None


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


_NONE_WORDS = ("none", "null", "~")
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True,
               "false": False, "no": False, "off": False, "0": False}  # fmt: skip


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """``value`` (from YAML or a command-line string) as type ``tp``, or ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, arg, value)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"config: {name}: must not be None")
    if tp is Any:
        return _yaml_value(value) if isinstance(value, str) else value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise ConfigError(f"config: {name}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config: {name}: expected an int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"config: {name}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config: {name}: expected a string, got {value!r}")
    if origin in (tuple, list) or tp in (tuple, list):
        if isinstance(value, str):
            value = _yaml_value(value)
            if isinstance(value, str):
                value = [value]  # a single item: --engine.stop "</step>"
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config: {name}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(f"{name}[{i}]", item, v) for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if isinstance(value, str):
            value = _yaml_value(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"config: {name}: expected a mapping, got {value!r}")
        return {str(k): (_yaml_value(v) if isinstance(v, str) else v) for k, v in value.items()}
    return value


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
