"""Prompt encoding with a real Hugging Face tokenizer, with and without a chat template."""

from __future__ import annotations

import gymnasium as gym

import langrl  # noqa: F401
from langrl.agents.base import encode_prompt
from langrl.tiny.tokenizer import build_tokenizer

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _info() -> dict:
    env = gym.make("Countdown-v0")
    _, info = env.reset(options={"numbers": [3, 5, 7, 2], "target": 24})
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
