"""Prompt encoding with a real Hugging Face tokenizer, with and without a chat template."""

from __future__ import annotations

import asyncio

import gymnasium as gym
import pytest
from sampling_fakes import ScriptedEngine

import langrl  # noqa: F401
from langrl.agents.best_of_n import BestOfNAgent, BestOfNConfig
from langrl.agents.cispo import CISPOAgent, CISPOConfig
from langrl.agents.evaluation import EvalConfig, evaluate
from langrl.engine.base import encode_prompt
from langrl.tiny.tokenizer import build_tokenizer

TASK = {"numbers": [3, 5, 7, 2], "target": 24}

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _info() -> dict:
    env = gym.make("Countdown-v0")
    _, info = env.reset(options=TASK)
    return info


def test_chat_template_gives_token_ids_of_the_rendered_messages():
    tok = build_tokenizer()
    tok.chat_template = TEMPLATE
    info = _info()
    ids = encode_prompt(tok, info, use_chat_template=True)
    assert all(isinstance(t, int) for t in ids)
    text = tok.decode(ids)
    assert text.startswith("<|system|>") and text.endswith("<|assistant|>")
    assert info["messages"][-1]["content"] in text


def test_plain_prompt_without_template_or_when_not_asked():
    tok = build_tokenizer()
    info = _info()
    plain = encode_prompt(tok, info, use_chat_template=True)  # no template: plain prompt
    assert tok.decode(plain) == info["prompt"] == "Numbers: 3 5 7 2\nTarget: 24\n"
    tok.chat_template = TEMPLATE
    assert encode_prompt(tok, info, use_chat_template=False) == plain


@pytest.mark.parametrize("use_chat_template", [True, False])
def test_agents_and_evaluation_encode_prompts_with_the_engine_flag(use_chat_template):
    # The one chat-template flag is the engine's (EngineConfig.use_chat_template): every
    # agent and evaluation opens its episodes through ``engine.encode_prompt``.
    tok = build_tokenizer()
    tok.chat_template = TEMPLATE
    engine = ScriptedEngine({})
    engine.tokenizer = tok
    engine.use_chat_template = use_chat_template
    info = _info()
    expected = tok.decode(encode_prompt(tok, info, use_chat_template))
    assert expected.startswith("<|system|>") == use_chat_template

    asyncio.run(CISPOAgent(CISPOConfig(group_size=2), "Countdown-v0", {}, engine).collect([TASK]))
    asyncio.run(BestOfNAgent(BestOfNConfig(n=2), "Countdown-v0", {}, engine).collect([TASK]))
    evaluate(engine, "Countdown-v0", {}, [TASK], EvalConfig(k=1, progress=False))
    assert [text for text, _ in engine.requests] == [expected] * 3
