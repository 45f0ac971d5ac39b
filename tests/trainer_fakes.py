"""A fake ``SyncEngine`` for fast tests of the training loop (no vLLM): a scripted async
engine that speaks the real tiny tokenizer, driven from its own event-loop thread exactly
as ``SyncEngine`` drives the real one (``run``, ``submit``, ``load_weights``)."""

from __future__ import annotations

import asyncio
import random
import re
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

from transformers import AutoTokenizer

from langrl.engine.base import Generation, PolicyEngine, Sample, SamplingConfig

#: Completions with different Countdown rewards, so CISPO groups have variance.
COMPLETIONS = (
    "<step>1 + 2 = 3</step>\n<answer>1 + 2</answer>",
    "<answer>1 * 2</answer>",
    "no answer here",
    "<step>2 * 3 = 6</step>",
)


class TokenizedScriptedEngine(PolicyEngine):
    """Sample ``i`` of a request is ``completions[(calls + i) % len]`` (``[calls % len]`` for
    all of a ``uniform_frac`` share of requests), tokenized for real; ``{lo}`` and ``{hi}`` in
    a completion become the smaller and larger of the prompt's first two Countdown numbers
    (``<answer>{lo} / {hi}</answer>`` is legal and scores above -1 for every target)."""

    def __init__(
        self,
        model_path: str | Path,
        completions: Sequence[str] = COMPLETIONS,
        uniform_frac: float = 0.0,
    ) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.completions = list(completions)
        #: Share of requests (drawn per call, seeded by the call's index) whose samples are
        #: all the same completion: a CISPO group without reward variance, so yields vary.
        self.uniform_frac = uniform_frac
        self.policy_version = 0
        self.calls = 0
        self.pushed: list[int] = []

    async def generate(self, prompt, sampling: SamplingConfig) -> Generation:
        ids = list(prompt)
        samples = []
        uniform = random.Random(self.calls).random() < self.uniform_frac
        numbers = re.search(r"Numbers: ([\d ]+)", self.tokenizer.decode(ids))
        lo, hi = sorted(int(x) for x in numbers.group(1).split()[:2]) if numbers else (1, 1)
        for i in range(sampling.n):
            text = self.completions[(self.calls + (0 if uniform else i)) % len(self.completions)]
            text = text.format(lo=lo, hi=hi)
            tok = self.tokenizer(text, add_special_tokens=False)["input_ids"][: sampling.max_tokens]
            samples.append(
                Sample(tok, self.tokenizer.decode(tok), [-1.0] * len(tok), -len(tok), "stop")
            )
        self.calls += 1
        await asyncio.sleep(0)
        return Generation(ids, samples, self.policy_version)

    async def score(self, prompt_ids, completions):
        return [[-1.0] * len(c) for c in completions]

    async def values(self, states):
        return [0.0 for _ in states]

    def load_weights(self, lm_state, value_head_state) -> int:
        self.pushed.append(len(lm_state))
        self.policy_version += 1
        return self.policy_version

    def shutdown(self) -> None:
        pass


class FakeSyncEngine:
    """``SyncEngine``'s surface over ``TokenizedScriptedEngine``."""

    def __init__(self, model_path: str | Path, **kwargs) -> None:
        self.engine = TokenizedScriptedEngine(model_path, **kwargs)
        self.tokenizer = self.engine.tokenizer
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    @property
    def policy_version(self) -> int:
        return self.engine.policy_version

    def submit(self, coro) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro):
        return self.submit(coro).result()

    def load_weights(self, lm_state, value_head_state) -> int:
        return self.engine.load_weights(lm_state, value_head_state)

    def shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
