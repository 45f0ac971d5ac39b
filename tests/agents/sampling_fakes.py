"""A small deterministic fake ``PolicyEngine`` and tokenizer for unit tests of the sampling
agents (CISPO, best-of-N, evaluation): completions are scripted per prompt, so rewards,
advantages and mean@k can be checked by hand. Real-engine runs are in ``tests/e2e``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from langrl.engine.base import (
    Generation,
    PolicyEngine,
    PromptTooLongError,
    Sample,
    SamplingConfig,
)


class CharTokenizer:
    """One token per character (``ord``); no chat template."""

    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)


class ScriptedEngine(PolicyEngine):
    """``generate`` returns, for the prompt text, ``script[prompt][i % len]`` as sample i.

    Each sample's token ids are its characters and every logprob is ``-0.5``, so tests can
    check that trajectories carry exactly the sampled ids and logprobs.
    """

    def __init__(
        self,
        script: Mapping[str, Sequence[str]],
        default: Sequence[str] = ("",),
        max_prompt_len: int | None = None,
    ):
        self.max_prompt_len = max_prompt_len
        self.tokenizer = CharTokenizer()
        self.script = dict(script)
        self.default = list(default)
        self.policy_version = 3
        self.requests: list[tuple[str, SamplingConfig]] = []

    async def generate(self, prompt, sampling: SamplingConfig) -> Generation:
        ids = list(prompt) if not isinstance(prompt, str) else self.tokenizer(prompt)["input_ids"]
        if self.max_prompt_len is not None and len(ids) > self.max_prompt_len:
            raise PromptTooLongError(f"prompt has {len(ids)} tokens")  # as the real engines
        text = self.tokenizer.decode(ids)
        self.requests.append((text, sampling))
        texts = self.script.get(text, self.default)
        samples = []
        for i in range(sampling.n):
            t = texts[i % len(texts)]
            tok = [ord(c) for c in t]
            samples.append(Sample(tok, t, [-0.5] * len(tok), -0.5 * len(tok), "stop"))
        return Generation(ids, samples, self.policy_version)

    async def score(self, prompt_ids, completions):
        return [[-0.5] * len(c) for c in completions]

    async def values(self, states):
        return [0.0 for _ in states]

    def load_weights(self, lm_state, value_head_state) -> int:
        self.policy_version += 1
        return self.policy_version

    def shutdown(self) -> None:
        pass


# Countdown tasks with hand-checkable rewards (dense: 1 correct, 1 - 2 min(d, 1) wrong, -1 bad).
TASK_A = {"numbers": [3, 5, 7, 2], "target": 24}
TASK_B = {"numbers": [1, 2, 3, 4], "target": 10}
PROMPT_A = "Numbers: 3 5 7 2\nTarget: 24\n"
PROMPT_B = "Numbers: 1 2 3 4\nTarget: 10\n"
CORRECT_A = "<step>3 * 7 = 21</step>\n<answer>3 * 7 + 5 - 2</answer>"
WRONG_A = "<answer>3 + 5</answer>"  # 8: d = 16/24, dense reward 1 - 2 * 2/3 = -1/3
MALFORMED = "no tags here"  # -1 dense, 0 sparse, not format-ok
CORRECT_B = "<answer>1 + 2 + 3 + 4</answer>"
