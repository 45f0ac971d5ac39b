"""LearnerConfig: paper defaults, validation messages quoting values, dict round trip."""

from __future__ import annotations

import subprocess
import sys

import pytest

from langrl.learner import LearnerConfig


def test_defaults_are_the_papers_values():
    cfg = LearnerConfig()
    assert (cfg.c_policy, cfg.c_value, cfg.c_kl, cfg.eps_high) == (1.0, 1.0, 0.05, 5.0)
    assert cfg.policy_loss == "cispo" and cfg.loss_normalization == "token"
    assert cfg.policy_loss_kwargs() == {"eps_high": 5.0}


@pytest.mark.parametrize(
    "kwargs, quoted",
    [
        ({"lr": 0.0}, "got 0.0"),
        ({"micro_batch_size": 0}, "got 0"),
        ({"policy_loss": "grpo"}, "'grpo'"),
        ({"eps_high": 0.5}, "got 0.5"),
        ({"policy_loss": "ppo"}, "'ppo'"),
        ({"c_kl": -0.1}, "got -0.1"),
        ({"c_policy": 0.0, "c_value": 0.0, "c_kl": 0.0}, "identically zero"),
        ({"loss_normalization": "seq"}, "'seq'"),
        ({"dtype": "float16"}, "'float16'"),
        ({"device": "gpu0"}, "'gpu0'"),
        ({"device": "cuda:x"}, "'cuda:x'"),
        ({"dtype": "bfloat16", "device": "mps"}, "not supported"),
        ({"max_grad_norm": 0.0}, "got 0.0"),
        ({"adam_beta2": 1.0}, "got 1.0"),
        ({"value_lr": 0.0}, "got 0.0"),
        ({"value_warmup_steps": -1}, "got -1"),
        ({"warmup_steps": 1.5}, "LearnerConfig.warmup_steps must be an int >= 0, got 1.5"),
        ({"logits_chunk_size": 0}, "logits_chunk_size must be None or an int >= 1, got 0"),
    ],
)
def test_invalid_values_raise_value_error_quoting_them(kwargs, quoted):
    with pytest.raises(ValueError) as err:
        LearnerConfig(**kwargs)
    assert quoted in str(err.value)


def test_dict_round_trip_and_unknown_keys():
    cfg = LearnerConfig(lr=3e-4, max_grad_norm=None, dtype="bfloat16", device="cuda:1")
    assert LearnerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="learning_rate"):
        LearnerConfig.from_dict({"learning_rate": 1.0})
    # Fields removed since: a checkpoint's saved config naming them is refused, by name.
    with pytest.raises(ValueError, match="temperature"):
        LearnerConfig.from_dict({**cfg.to_dict(), "temperature": 0.8})


def test_the_config_imports_no_torch():
    # A config is pure: parsing and validating it must not wait for torch to import.
    code = (
        "import sys, langrl.learner.config as c, langrl.learner as l; c.LearnerConfig(); "
        "l.LearnerConfig(); print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_value_warmup_is_ignored_without_a_value_loss():
    # One preset serves every agent: CISPO's c_value = 0 leaves nothing to warm up.
    assert LearnerConfig(value_warmup_steps=3, c_value=0.0).value_warmup == 0
    assert LearnerConfig(value_warmup_steps=3).value_warmup == 3
