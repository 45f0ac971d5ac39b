"""The env contract: your own env by ``module:EnvId``, and its fitness checked before start-up."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import pytest

from langrl.envs import ReasoningEnv
from langrl.envs.base import CONTRACT_MEMBERS, contract_problems
from langrl.training.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


class TextOnlyEnv(gym.Env):
    """A plain Gymnasium text env: takes split/reward but has no snapshots or task index."""

    def __init__(self, split: str = "train", reward: str = "dense") -> None:
        self.action_space = self.observation_space = gym.spaces.Text(64)

    def reset(self, *, seed=None, options=None):
        return "Numbers: 1 2\n", {"prompt": "Numbers: 1 2\n", "messages": []}

    def step(self, action):
        return "", 0.0, True, False, {"reason": "correct", "is_correct": True}


def _sum_env_class() -> type[ReasoningEnv]:
    import sum_env  # the worked example beside this file (registers Sum-v0)

    return sum_env.SumEnv


class DenseOnlyEnv(_sum_env_class()):
    """Fits training but has no sparse preset, so it cannot be evaluated."""

    REWARD_PRESETS = {"dense": _sum_env_class().REWARD_PRESETS["dense"]}


class NoTaskInfoEnv(_sum_env_class()):
    """Everything but ``task_info``: fine for sampling agents, not for tree search."""

    task_info = None  # type: ignore[assignment]

    def reset(self, *, seed=None, options=None):
        # ReasoningEnv.reset builds its info with task_info: lend it for this call only.
        self.task_info = lambda: ReasoningEnv.task_info(self)
        try:
            return super().reset(seed=seed, options=options)
        finally:
            del self.task_info


@pytest.fixture(scope="module", autouse=True)
def _registered():
    for env_id, cls in (
        ("TextOnly-v0", TextOnlyEnv),
        ("DenseOnly-v0", DenseOnlyEnv),
        ("NoTaskInfo-v0", NoTaskInfoEnv),
    ):
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=cls)
    yield
    for env_id in ("TextOnly-v0", "DenseOnly-v0", "NoTaskInfo-v0"):
        gym.registry.pop(env_id, None)


def _error(**kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(TINY, **kwargs)
    message = str(err.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("agent", ["mcts", "cispo", "bon"])
def test_module_colon_id_loads_your_own_env_for_every_agent(agent):
    config = load_config(TINY, agent=agent, env_id="sum_env:Sum-v0")
    assert config.env_id == "sum_env:Sum-v0"
    assert config.train_split_size() == 64


def test_a_plain_id_registered_by_an_imported_module_is_accepted():
    assert load_config(TINY, agent="cispo", env_id="Sum-v0").env_id == "Sum-v0"


def test_unknown_module_or_id_is_one_line_naming_it():
    message = _error(env_id="no_such_module:Sum-v0")
    assert message.startswith("config: env_id:") and "'no_such_module'" in message
    message = _error(env_id="sum_env:Nope-v0")
    assert "unknown env 'sum_env:Nope-v0'" in message and "did not register it" in message
    assert "module:EnvId-v0" in _error(env_id="Nope-v0")


def test_a_plain_gymnasium_env_is_refused_before_start_up_naming_what_is_missing():
    message = _error(agent="cispo", env_id="TextOnly-v0")
    assert message.startswith("config: env_id: TextOnly-v0 does not fit agent cispo")
    assert "num_tasks, get_state, set_state" in message and "task_info" not in message
    assert "task_info" in _error(agent="mcts", env_id="TextOnly-v0")


def test_tree_search_needs_task_info_sampling_agents_do_not():
    assert load_config(TINY, agent="cispo", env_id="NoTaskInfo-v0").env_id == "NoTaskInfo-v0"
    message = _error(agent="mcts", env_id="NoTaskInfo-v0")
    assert "does not fit agent mcts: no task_info" in message


def test_evaluation_needs_a_sparse_reward():
    message = _error(agent="cispo", env_id="DenseOnly-v0")
    assert message.startswith("config: eval.reward: DenseOnly-v0") and "'sparse'" in message
    # With a reward it has, the same env is fine.
    config = load_config(TINY, ["--eval.reward", "dense"], agent="cispo", env_id="DenseOnly-v0")
    assert config.eval.reward == "dense"


def test_contract_problems_lists_members_by_use():
    assert set(CONTRACT_MEMBERS) == {"rollouts", "search"}
    env = gym.make("sum_env:Sum-v0")
    assert contract_problems(env, ("rollouts", "search")) == []
    assert contract_problems(gym.make("TextOnly-v0")) == ["no num_tasks, get_state, set_state"]


def test_evaluate_cli_takes_module_colon_id_and_checks_the_sparse_reward(
    capsys, monkeypatch, load_script
):
    import langrl.engine

    def no_engine(*args, **kwargs):
        raise AssertionError("no engine may start on a bad env")

    monkeypatch.setattr(langrl.engine, "create_engine", no_engine)
    assert load_script("evaluate").main(["--model", "/no/such/dir", "--env", "DenseOnly-v0"]) == 2
    assert "error: config: eval.reward: DenseOnly-v0" in capsys.readouterr().err
