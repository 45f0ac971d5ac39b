"""langrl.metrics: one list of grouped tags, and a logger that writes what TensorBoard reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from langrl import metrics
from langrl.learner import METRIC_TAGS
from langrl.metrics import TAGS, TensorBoardLogger, check_tag, flatten_config


def test_every_tag_is_grouped_and_the_learner_tags_are_listed():
    for tag in TAGS:
        check_tag(tag)
    assert set(METRIC_TAGS) <= set(TAGS)
    assert set(metrics.CORE_TRAIN_TAGS) <= set(TAGS)
    with pytest.raises(ValueError, match="group/name"):
        check_tag("reward")
    with pytest.raises(ValueError, match="group/name"):
        check_tag("charts/reward")


@dataclass
class _Inner:
    lr: float = 1e-4
    stop: tuple[str, ...] = ("</step>",)


@dataclass
class _Outer:
    agent: str = "cispo"
    learner: _Inner = field(default_factory=_Inner)


def test_flatten_config_uses_dotted_keys():
    assert flatten_config(_Outer()) == {
        "agent": "cispo",
        "learner.lr": 1e-4,
        "learner.stop": ("</step>",),
    }


def test_logger_writes_scalars_text_hparams_and_config(tmp_path):
    with TensorBoardLogger(tmp_path, _Outer()) as tb:
        tb.log_scalars({"train/reward_mean": 0.5, "loss/total": float("nan")}, 1)
        tb.log_scalars({"train/reward_mean": 0.7}, 2)
        tb.log_text("train/samples", ["a | b", "c"], 2)
        with pytest.raises(ValueError):
            tb.log_scalars({"reward": 1.0}, 3)
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/reward_mean")] == [
        (1, 0.5),
        (2, pytest.approx(0.7)),
    ]
    assert "loss/total" not in acc.Tags()["scalars"]  # non-finite values are skipped
    texts = acc.Tags()["tensors"]
    assert "hyperparameters/text_summary" in texts and "train/samples/text_summary" in texts
    table = acc.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "|learner.lr|0.0001|" in table
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == {
        "agent": "cispo",
        "learner": {"lr": 1e-4, "stop": ["</step>"]},
    }
