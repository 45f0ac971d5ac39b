"""The paper preset starts and trains one MCTS step on CPU (slow; runs in CI).

``configs/qwen2.5-1.5b-paper.yaml`` targets Qwen2.5-1.5B-Instruct on GPUs. Here it runs on
a model of the same family built locally: Qwen2 with grouped-query attention and tied
embeddings (as Qwen2.5-1.5B), random weights, the byte-level BPE tokenizer with merges and
its ChatML template (``use_chat_template: true`` stays on). Only what cannot run on this
machine or in a test's time is overridden: the model, the learner's device (``cpu``),
the engine's memory (a 0.5 GiB KV cache instead of half a GPU), and the sizes of the
search, batch and final evaluation. Its own real vLLM engine is started (the session engine
serves another model).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from langrl.learner import Learner, latest_checkpoint
from langrl.tiny.bpe_tokenizer import build_bpe_tokenizer
from langrl.tiny.model import TinyModelSpec, build_random_policy
from langrl.training import train
from langrl.training.config import load_config

# Starts its own engine (up to 300 s startup_timeout_s), then trains a step and evaluates.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "configs" / "qwen2.5-1.5b-paper.yaml"


#: Qwen2.5-1.5B's shape in miniature: grouped-query attention (it has 12 / 2 heads) and tied
#: embeddings (``build_random_policy`` ties them), head dim 64.
QWEN25_TINY = TinyModelSpec(
    hidden_size=256,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=512,
    max_position_embeddings=2048,
)


def test_paper_preset_trains_one_mcts_step_on_cpu(tmp_path, monkeypatch):
    model = build_random_policy(
        tmp_path / "qwen2.5-tiny", QWEN25_TINY, tokenizer=build_bpe_tokenizer()
    )
    run_dir = tmp_path / "run"
    overrides = [
        "--total_steps", "1", "--batch_size", "2", "--sync_every", "1", "--max_staleness", "1",
        "--eval_every", "0", "--checkpoint_every", "0", "--progress", "false",
        "--run_dir", str(run_dir),
        "--learner.device", "cpu", "--learner.micro_batch_size", "2",
        "--engine.kv_cache_gib", "0.5", "--engine.enforce_eager", "true",
        "--engine.max_model_len", "1024",
        "--mcts.num_workers", "2", "--mcts.iterations_per_worker", "2",
        "--mcts.max_step_tokens", "16", "--mcts.finish_max_tokens", "32",
        # The run ends with an evaluation: 2 problems, not the paper's 820 x 16 x 512 tokens.
        "--eval.num_problems", "2", "--eval.k", "2", "--eval.max_tokens", "16",
    ]  # fmt: skip
    config = load_config(PAPER, overrides, agent="mcts", model=str(model))
    # What the test keeps from the paper preset: chat template, CISPO loss, bf16 learner.
    assert config.engine.use_chat_template
    assert (config.learner.policy_loss, config.learner.dtype) == ("cispo", "bfloat16")

    seen: list = []
    original = Learner.step

    def step(self, batch, current_version=None):
        seen.append(list(batch))
        return original(self, batch, current_version=current_version)

    monkeypatch.setattr(Learner, "step", step)
    result = train(config)

    assert result["step"] == 1 and len(seen) == 1
    tok = AutoTokenizer.from_pretrained(model)
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    for traj in seen[0]:
        assert im_start in traj.prompt_ids  # the prompt came through the chat template
        assert tok.decode(traj.completion_ids, skip_special_tokens=True).startswith(
            traj.info["text"]
        )
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    assert checkpoint is not None
    saved = AutoTokenizer.from_pretrained(checkpoint)
    assert saved.chat_template == tok.chat_template
    assert json.loads((checkpoint / "config.json").read_text())["num_key_value_heads"] == 2
