"""Checkpoints (round trip, from_pretrained, atomicity) and weight export for the engine."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from learner_utils import make_batch
from transformers import AutoModelForCausalLM, AutoTokenizer

from langrl.learner import Learner, LearnerConfig, latest_checkpoint
from langrl.learner import learner as learner_module
from langrl.policy_model import PolicyValueModel


@pytest.fixture()
def trained(tiny_policy) -> Learner:
    learner = Learner(tiny_policy, LearnerConfig(lr=1e-3, c_kl=0.05))
    batch = make_batch(3, advantages=[1.0, -1.0, 0.5])
    learner.step(batch)
    learner.step(batch)
    return learner


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def _optimizer_tensors(learner: Learner) -> dict[str, torch.Tensor]:
    state = learner.optimizer.state_dict()["state"]
    return {f"{i}.{k}": v for i, s in state.items() for k, v in s.items()}


def test_round_trip_restores_weights_optimizer_step_and_extra(tiny_policy, trained, tmp_path):
    path = trained.save_checkpoint(tmp_path / "ckpt", extra={"data_position": 1234, "epoch": 1})
    assert path.name == "step_00000002"
    assert latest_checkpoint(tmp_path / "ckpt") == path

    resumed = Learner(tiny_policy, LearnerConfig(lr=1e-3, c_kl=0.05))
    step, extra = resumed.load_checkpoint(tmp_path / "ckpt")
    assert (step, extra) == (2, {"data_position": 1234, "epoch": 1})
    assert resumed.global_step == 2
    _assert_same_state(resumed.model.state_dict(), trained.model.state_dict())
    _assert_same_state(_optimizer_tensors(resumed), _optimizer_tensors(trained))
    # The KL reference stays the initial policy, not the checkpoint.
    initial = AutoModelForCausalLM.from_pretrained(str(tiny_policy))
    _assert_same_state(resumed.ref_model.state_dict(), initial.state_dict())

    # Resuming is exact: the next step gives bit-identical weights.
    batch = make_batch(3, seed=7, advantages=[0.5, 0.5, -1.0])
    trained.step(batch)
    resumed.step(batch)
    _assert_same_state(resumed.model.state_dict(), trained.model.state_dict())
    state = json.loads((path / "learner_state.json").read_text())
    assert LearnerConfig.from_dict(state["config"]) == trained.config


def test_checkpoint_is_a_from_pretrained_model_directory(trained, tmp_path):
    path = trained.save_checkpoint(tmp_path, step=5)
    lm = AutoModelForCausalLM.from_pretrained(str(path))
    _assert_same_state(lm.state_dict(), trained.model.lm.state_dict())
    both = PolicyValueModel.from_pretrained(path)
    _assert_same_state(both.value_head.state_dict(), trained.model.value_head.state_dict())
    assert len(AutoTokenizer.from_pretrained(str(path))) == trained.model.lm.config.vocab_size


def test_failure_mid_write_leaves_latest_on_the_previous_checkpoint(trained, tmp_path, monkeypatch):
    first = trained.save_checkpoint(tmp_path, step=1)
    before = sorted(os.listdir(tmp_path))

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated) after the model files were written")

    monkeypatch.setattr(learner_module.torch, "save", crash)
    with pytest.raises(OSError, match="simulated"):
        trained.save_checkpoint(tmp_path, step=2)
    assert latest_checkpoint(tmp_path) == first
    assert (tmp_path / "latest").read_text() == "step_00000001"
    assert sorted(os.listdir(tmp_path)) == before  # no partial step_00000002, no temp dir


def test_a_kill_mid_write_leaves_only_an_ignored_temp_dir(trained, tmp_path, monkeypatch):
    first = trained.save_checkpoint(tmp_path, step=1)

    # A SIGKILL runs no cleanup: simulate it by making cleanup a no-op too.
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(learner_module.torch, "save", crash)
    monkeypatch.setattr(learner_module.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(KeyboardInterrupt):
        trained.save_checkpoint(tmp_path, step=2)
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1 and (leftovers[0] / "model.safetensors").is_file()
    assert latest_checkpoint(tmp_path) == first
    monkeypatch.undo()

    # The next save cleans the leftover up.
    second = trained.save_checkpoint(tmp_path, step=3)
    assert latest_checkpoint(tmp_path) == second
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_latest_checkpoint_falls_back_to_the_newest_complete_directory(trained, tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None
    trained.save_checkpoint(tmp_path, step=1)
    second = trained.save_checkpoint(tmp_path, step=2)
    (tmp_path / "step_00000009").mkdir()  # incomplete: no learner_state.json
    (tmp_path / "latest").unlink()
    assert latest_checkpoint(tmp_path) == second
    (tmp_path / "latest").write_text("step_00000009")
    assert latest_checkpoint(tmp_path) == second


def test_resaving_a_step_replaces_it(trained, tmp_path):
    trained.save_checkpoint(tmp_path, step=4, extra={"v": 1})
    path = trained.save_checkpoint(tmp_path, step=4, extra={"v": 2})
    assert json.loads((path / "learner_state.json").read_text())["extra"] == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000004"]


def test_load_checkpoint_without_any_raises(tiny_policy, tmp_path):
    learner = Learner(tiny_policy, LearnerConfig(c_kl=0.0))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        learner.load_checkpoint(tmp_path)


def test_export_weights_uses_hf_names_and_skips_the_tied_head(trained, tiny_policy):
    lm_state, head_state = trained.export_weights()
    keys = set(trained.model.lm.state_dict())
    assert trained.model.lm.config.tie_word_embeddings
    assert set(lm_state) == keys - {"lm_head.weight"}
    assert set(head_state) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert all(not t.requires_grad for t in [*lm_state.values(), *head_state.values()])

    # A fresh copy of the initial policy loads them and then computes the trained outputs.
    fresh = PolicyValueModel.from_pretrained(tiny_policy)
    missing, unexpected = fresh.lm.load_state_dict(lm_state, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    fresh.value_head.load_state_dict(head_state)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        got, expected = fresh(ids), trained.model(ids)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])


# --- tokenizers: a checkpoint stands alone ------------------------------------------------------

TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


def test_checkpoint_tokenizer_from_files_of_other_names(tiny_policy, tmp_path):
    # The chat template in additional_chat_templates/default.jinja, which a copy by known
    # file names misses: the checkpoint must still carry a tokenizer with the template.
    source = tmp_path / "model"
    shutil.copytree(tiny_policy, source)
    (source / "additional_chat_templates").mkdir()
    (source / "additional_chat_templates" / "default.jinja").write_text(TEMPLATE)
    original = AutoTokenizer.from_pretrained(source)
    assert original.chat_template == TEMPLATE
    learner = Learner(source, LearnerConfig(c_kl=0.0))
    path = learner.save_checkpoint(tmp_path / "ckpt")
    restored = AutoTokenizer.from_pretrained(path)
    assert restored.chat_template == TEMPLATE
    text = "12+7=19</step>"
    assert restored(text)["input_ids"] == original(text)["input_ids"]
    messages = [{"role": "user", "content": "1 2 3 4"}]
    assert restored.apply_chat_template(messages, tokenize=False) == original.apply_chat_template(
        messages, tokenize=False
    )


def test_checkpoint_tokenizer_of_a_hub_id_is_loaded_by_that_id(tiny_policy, monkeypatch, tmp_path):
    # Offline stand-in for the hub: the id resolves to the tiny policy's tokenizer.
    asked: list[str] = []

    class FakeHub:
        @staticmethod
        def from_pretrained(name: str):
            asked.append(name)
            return AutoTokenizer.from_pretrained(tiny_policy)

    monkeypatch.setattr(learner_module, "AutoTokenizer", FakeHub)
    tokenizer = learner_module.load_checkpoint_tokenizer("Qwen/Qwen2.5-1.5B-Instruct")
    assert asked == ["Qwen/Qwen2.5-1.5B-Instruct"]
    tokenizer.save_pretrained(tmp_path)
    assert (
        AutoTokenizer.from_pretrained(tmp_path)("12+7")["input_ids"]
        == tokenizer("12+7")["input_ids"]
    )


def test_a_model_directory_without_tokenizer_gives_checkpoints_without_one(
    tiny_policy, tmp_path, caplog
):
    source = tmp_path / "model"
    shutil.copytree(tiny_policy, source)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (source / name).unlink()
    with caplog.at_level("WARNING"):
        learner = Learner(source, LearnerConfig(c_kl=0.0))
    assert learner.tokenizer is None
    assert "holds no tokenizer" in caplog.text
    path = learner.save_checkpoint(tmp_path / "ckpt")
    assert not (path / "tokenizer_config.json").exists()
