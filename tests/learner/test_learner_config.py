"""LearnerConfig: paper defaults, validation messages quoting values, dict round trip."""

from __future__ import annotations

import pytest

from langrl.learner import LearnerConfig


def test_defaults_are_the_papers_values():
    cfg = LearnerConfig()
    assert (cfg.c_policy, cfg.c_value, cfg.c_kl, cfg.eps_high) == (1.0, 1.0, 0.05, 5.0)
    assert cfg.policy_loss == "cispo" and cfg.loss_normalization == "token"
    assert cfg.policy_loss_kwargs() == {"eps_high": 5.0}
    ppo = LearnerConfig(policy_loss="ppo", ppo_clip_high=0.28)
    assert ppo.policy_loss_kwargs() == {"clip_low": 0.2, "clip_high": 0.28}


@pytest.mark.parametrize(
    "kwargs, quoted",
    [
        ({"lr": 0.0}, "got 0.0"),
        ({"micro_batch_size": 0}, "got 0"),
        ({"policy_loss": "grpo"}, "'grpo'"),
        ({"eps_high": 0.5}, "got 0.5"),
        ({"ppo_clip_low": 1.0}, "got 1.0"),
        ({"c_kl": -0.1}, "got -0.1"),
        ({"c_policy": 0.0, "c_value": 0.0, "c_kl": 0.0}, "identically zero"),
        ({"loss_normalization": "seq"}, "'seq'"),
        ({"temperature": 0.0}, "got 0.0"),
        ({"dtype": "float16"}, "'float16'"),
        ({"device": "gpu0"}, "'gpu0'"),
        ({"max_grad_norm": 0.0}, "got 0.0"),
        ({"adam_beta2": 1.0}, "got 1.0"),
        ({"value_lr": 0.0}, "got 0.0"),
        ({"value_init": -1.0}, "got -1.0"),
        ({"value_warmup_steps": -1}, "got -1"),
        ({"logits_chunk_size": 0}, "logits_chunk_size must be >= 1 or None"),
    ],
)
def test_invalid_values_raise_value_error_quoting_them(kwargs, quoted):
    with pytest.raises(ValueError) as err:
        LearnerConfig(**kwargs)
    assert quoted in str(err.value)


def test_dict_round_trip_and_unknown_keys():
    cfg = LearnerConfig(lr=3e-4, policy_loss="ppo", max_grad_norm=None, dtype="bfloat16")
    assert LearnerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="learning_rate"):
        LearnerConfig.from_dict({"learning_rate": 1.0})


def test_value_warmup_is_ignored_without_a_value_loss():
    # One preset serves every agent: CISPO's c_value = 0 leaves nothing to warm up.
    assert LearnerConfig(value_warmup_steps=3, c_value=0.0).value_warmup == 0
    assert LearnerConfig(value_warmup_steps=3).value_warmup == 3
