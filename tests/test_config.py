"""TrainConfig: YAML presets, --key value overrides, one-line errors before any start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from langrl.agents.cispo import CISPOConfig
from langrl.training.config import (
    DEFAULT_MODEL,
    ConfigError,
    TrainConfig,
    build_config,
    load_config,
)

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny_cpu.yaml"
PAPER = ROOT / "configs" / "qwen2.5-1.5b-paper.yaml"


def _error(**kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(**kwargs)
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_tiny_preset_with_overrides():
    config = load_config(
        TINY,
        ["--total_steps", "5", "--learner.lr", "3e-4", "--cispo.group_size=4",
         "--env_kwargs.reward", "sparse", "--max_staleness", "none", "--eval.num_problems", "null"],
        agent="cispo",
    )  # fmt: skip
    assert isinstance(config.agent_config, CISPOConfig)
    assert config.total_steps == 5
    assert config.learner.lr == pytest.approx(3e-4)
    assert config.agent_config.group_size == 4
    assert config.agent_config.num_prompts == 8  # from the preset
    assert config.env_kwargs == {"reward": "sparse"}
    assert config.max_staleness is None and config.eval.num_problems is None
    assert config.rollout_tasks == 8


def test_eval_env_kwargs_from_the_command_line():
    config = load_config(
        TINY,
        ["--env_kwargs.use_all_numbers", "true", "--eval.env_kwargs.use_all_numbers", "false"],
        agent="bon",
    )
    assert config.train_env_kwargs["use_all_numbers"] is True
    assert config.eval.env_kwargs_over(config.env_kwargs)["use_all_numbers"] is False


def test_per_agent_sections_apply_to_their_agent_only(tmp_path):
    preset = tmp_path / "compare.yaml"
    preset.write_text(
        "batch_size: 32\nlearner: {lr: 2.0e-5, warmup_steps: 5}\n"
        "per_agent:\n  bon: {batch_size: 16, learner: {lr: 1.0e-4}}\n"
    )
    bon = load_config(preset, agent="bon")
    assert (bon.batch_size, bon.learner.lr, bon.learner.warmup_steps) == (16, 1e-4, 5)
    cispo = load_config(preset, agent="cispo")
    assert (cispo.batch_size, cispo.learner.lr) == (32, 2e-5)
    # The command line still wins over the agent's section.
    assert load_config(preset, ["--learner.lr", "3e-4"], agent="bon").learner.lr == 3e-4
    preset.write_text("per_agent:\n  bon: {agent: cispo}\n")
    assert "per_agent.bon.agent" in _error(path=preset, agent="bon")
    preset.write_text("per_agent:\n  ppo: {batch_size: 4}\n")
    assert "per_agent.ppo" in _error(path=preset, agent="bon")
    preset.write_text("per_agent:\n  mcts: {btach_size: 4}\n")
    assert "per_agent.mcts.btach_size" in _error(path=preset, agent="bon")


def test_learner_temperature_is_not_a_knob():
    # The sampling temperature travels on each Trajectory; a second copy could only disagree.
    assert "learner.temperature" in _error(path=TINY, overrides=["--learner.temperature", "1.0"])


def test_mcts_without_a_value_head_trains_none():
    assert load_config(TINY, ["--mcts.value_head", "false"], agent="mcts").learner.c_value == 0.0
    told = load_config(TINY, ["--mcts.value_head", "false", "--learner.c_value", "0.5"])
    assert told.learner.c_value == 0.5


def test_cispo_turns_the_unused_value_loss_off_unless_told_otherwise():
    # CISPO supplies its own advantages: the value head is unused, its loss only moves the trunk.
    assert load_config(TINY, agent="cispo").learner.c_value == 0.0
    assert TrainConfig(agent="cispo").learner.c_value == 0.0
    assert load_config(TINY, agent="mcts").learner.c_value == 1.0  # MCTS needs V
    assert load_config(TINY, agent="bon").learner.c_value == 1.0  # baseline r - V
    told = load_config(TINY, ["--learner.c_value", "0.5"], agent="cispo")
    assert told.learner.c_value == 0.5


@pytest.fixture
def paper_model_cached(offline_hub_cache):
    """The paper preset's model in the local HF cache (validation looks there, offline)."""
    offline_hub_cache("Qwen/Qwen2.5-1.5B-Instruct")


@pytest.mark.parametrize("agent", ["mcts", "cispo", "bon"])
@pytest.mark.parametrize("preset", [TINY, PAPER])
def test_presets_load_for_every_agent(preset, agent, paper_model_cached):
    config = load_config(preset, agent=agent)
    assert config.agent == agent
    assert (
        type(config.agent_config)
        .__name__.lower()
        .startswith({"mcts": "mcts", "cispo": "cispo", "bon": "bestofn"}[agent])
    )


def test_paper_preset_has_the_paper_settings(paper_model_cached):
    mcts = load_config(PAPER, agent="mcts")
    assert (mcts.batch_size, mcts.sync_every) == (32, 8)
    assert (mcts.learner.eps_high, mcts.learner.c_value, mcts.learner.c_kl) == (5.0, 1.0, 0.05)
    m = mcts.agent_config
    assert (m.num_workers, m.iterations_per_worker, m.num_expansions) == (16, 100, 4)
    assert (m.c_puct, m.virtual_loss, m.max_step_tokens, m.temperature) == (0.5, 1.0, 64, 0.8)
    assert (mcts.eval.k, mcts.eval.temperature, mcts.eval.num_problems) == (16, 0.2, None)
    cispo = load_config(PAPER, agent="cispo").agent_config
    assert (cispo.num_prompts, cispo.group_size) == (128, 16)
    assert load_config(PAPER, agent="bon").agent_config.n == 64


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"overrides": ["--bogus", "1"]}, "bogus"),
        ({"overrides": ["--learner.lrr", "1"]}, "learner.lrr"),
        ({"overrides": ["--learner.lr", "abc"]}, "learner.lr"),
        ({"overrides": ["--learner.lr", "-1"]}, "lr"),
        ({"overrides": ["--total_steps", "0"]}, "total_steps"),
        ({"overrides": ["--mode", "turbo"]}, "mode"),
        ({"overrides": ["--cispo.group_size", "1"], "agent": "cispo"}, "group_size"),
        ({"overrides": ["--eval.k", "many"]}, "eval.k"),
        ({"overrides": ["--env_kwargs.reward", "bogus"]}, "env_kwargs"),
        ({"overrides": ["--eval.env_kwargs.bogus", "1"]}, "eval.env_kwargs"),
        ({"overrides": ["--eval.env_kwargs.split", "train"]}, "eval"),
        ({"overrides": ["--mcts.nope", "1"], "agent": "cispo"}, "mcts.nope"),
        ({"agent": "ppo"}, "agent"),
        ({"env_id": "Chess-v0"}, "env_id"),
        ({"model": "./no/such/model"}, "model"),
        ({"overrides": ["total_steps", "3"]}, "--key value"),
        ({"overrides": ["--engine.model", "x"]}, "engine.model"),
        (
            {"overrides": ["--cispo.use_chat_template", "true"], "agent": "cispo"},
            "use_chat_template",
        ),
        ({"overrides": ["--engine.backend", "tpu"]}, "backend"),
        ({"overrides": ["--learner.num_threads", "0"]}, "num_threads"),
    ],
)
def test_bad_config_is_a_one_line_error_naming_the_field(kwargs, field):
    message = _error(path=TINY, **kwargs)
    assert field in message
    assert message.startswith("config:")


def test_unknown_agent_lists_the_valid_ones():
    assert "mcts, cispo, bon" in _error(path=None, agent="ppo")


def test_missing_preset_file():
    assert "does-not-exist.yaml" in _error(path="does-not-exist.yaml")


def test_model_directory_is_accepted(tmp_path, paper_model_cached):
    (tmp_path / "config.json").write_text("{}")
    assert load_config(TINY, model=str(tmp_path)).model == str(tmp_path)
    assert load_config(TINY, model="Qwen/Qwen2.5-1.5B-Instruct").model.startswith("Qwen/")


@pytest.mark.parametrize(
    "model, says",
    [
        ("sync", "nor in the local Hugging Face cache"),  # no slash: a typo, not a model
        ("nosuchorg/nosuchmodel", "HF_HUB_OFFLINE is set"),
        ("./no/such/model", "does not exist"),
        ("a--b", "does not exist"),  # no valid hub name either
    ],
)
def test_model_missing_locally_and_offline_is_refused_in_one_line(model, says, offline_hub_cache):
    message = _error(path=TINY, model=model)
    assert message.startswith("config: model:") and says in message and repr(model) in message


def test_model_file_or_directory_without_config_json_is_refused(tmp_path):
    assert "no config.json" in _error(path=TINY, model=str(tmp_path))
    (tmp_path / "weights.bin").write_text("x")
    assert "is a file" in _error(path=TINY, model=str(tmp_path / "weights.bin"))


def test_unreachable_hub_is_refused_without_a_long_wait(offline_hub_cache, monkeypatch):
    # Online mode on a machine with no network: one quick query, then a one-line refusal.
    # "Quick" is checked on the connections made, not on a clock: a few attempts, each with
    # a timeout, so the worst case (a hub that never answers) is bounded too.
    import socket

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    timeouts: list[float | None] = []
    connect = socket.socket.connect

    def recording_connect(sock, address):
        timeouts.append(sock.gettimeout())
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", recording_connect)
    message = _error(path=TINY, model="nosuchorg/nosuchmodel")
    assert "cannot be reached" in message or "no such model" in message
    # huggingface_hub may make one request of its own (3 s timeout) before ours (10 s).
    assert 1 <= len(timeouts) <= 3, timeouts
    assert all(t is not None for t in timeouts) and sum(timeouts) <= 15, timeouts


def test_engine_serves_the_run_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert load_config(TINY, model=str(tmp_path)).engine.model == str(tmp_path)
    assert load_config(TINY).engine.model == DEFAULT_MODEL  # resolved at start-up


def test_to_dict_round_trips():
    config = load_config(TINY, ["--bon.n", "3"], agent="bon")
    again = build_config(config.to_dict())
    assert again == config


def test_defaults_construct():
    config = TrainConfig()
    assert config.agent == "mcts" and config.env_id == "Countdown-v0"


def test_cli_reports_errors_before_starting_anything(monkeypatch, capsys, load_script):
    import langrl.training.run

    def boom(*args, **kwargs):
        raise AssertionError("train() must not start on a bad config")

    monkeypatch.setattr(langrl.training.run, "train", boom)
    main = load_script("train_agent").main
    for argv in (["--agent", "ppo"], ["--model", "/no/such/dir"], ["--learner.lr", "x"],
                 ["--env", "Nope-v0"]):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: config:") and "\n" not in err


# --- replicas, learner ranks, cluster ------------------------------------------------------


def test_replicas_and_ranks_parse_and_one_process_needs_no_ray():
    config = load_config(TINY, ["--engine.replicas", "2", "--engine.replica_cpus", "0.5"])
    assert config.engine.replicas == 2 and config.engine.replica_cpus == 0.5
    assert config.cluster.uses_ray(config.engine.replicas)
    plain = load_config(TINY)
    assert not plain.cluster.uses_ray(plain.engine.replicas, plain.learner.world_size)
    joined = load_config(TINY, ["--cluster.address", "auto"])
    assert joined.cluster.joins and joined.cluster.uses_ray()


def test_bad_cluster_settings_are_one_line_naming_the_field(monkeypatch):
    assert "replicas" in _error(path=TINY, overrides=["--engine.replicas", "0"])
    assert "ClusterConfig.address" in _error(path=TINY, overrides=["--cluster.address", "no way"])
    assert "world_size" in _error(path=TINY, overrides=["--learner.world_size", "0"])
    # More replicas than this machine's CPUs, for a local Ray: before anything starts.
    cpus = __import__("os").cpu_count()
    message = _error(path=TINY, overrides=["--engine.replicas", str(cpus + 1)])
    assert f"need {cpus + 1} CPUs" in message and f"offers {cpus}" in message
    # Ray missing: one line saying how to install it.
    from langrl.distributed import cluster

    monkeypatch.setattr(cluster.importlib.util, "find_spec", lambda name: None)
    message = _error(
        path=TINY, overrides=["--engine.replicas", "2", "--engine.replica_cpus", "0.5"]
    )
    assert "engine.replicas=2 needs Ray, which is not installed: pip install" in message


PAPER_8GPU = ROOT / "configs" / "qwen2.5-1.5b-paper-8gpu.yaml"


def test_paper_8gpu_preset_expresses_the_papers_split(paper_model_cached):
    from langrl.training.config import parse_config

    config = parse_config(PAPER_8GPU, agent="mcts")
    assert config.engine.replicas == 6 and config.learner.world_size == 2
    assert config.agent_config.num_workers == 16 and config.sync_every == 8  # extended
    assert config.engine.use_chat_template and config.cluster.address == "local"
    # This 2-core machine without GPUs cannot hold it: refused in one line, nothing started.
    message = _error(path=PAPER_8GPU, agent="mcts")
    assert "engine.replicas (6 CPU" in message and "learner.world_size (2 CPU" in message


def test_extends_merges_a_base_preset_and_refuses_cycles(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("total_steps: 7\nlearner: {lr: 0.5, c_kl: 0.1}\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nlearner: {lr: 0.25}\n")
    config = load_config(child, agent="bon")
    assert config.total_steps == 7 and config.learner.lr == 0.25 and config.learner.c_kl == 0.1
    base.write_text("extends: child.yaml\n")
    assert "a cycle" in _error(path=child)
    child.write_text("extends: missing.yaml\n")
    assert "extends: file" in _error(path=child)


def test_learner_threads_apply_to_a_cpu_learner_only():
    from langrl.training.run import learner_threads

    assert learner_threads(load_config(TINY)) is None  # torch's default
    assert learner_threads(load_config(TINY, ["--learner.num_threads", "1"])) == 1
    cuda = ["--learner.num_threads", "1", "--learner.device", "cuda"]
    assert learner_threads(load_config(TINY, cuda)) is None
