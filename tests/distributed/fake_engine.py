"""A fake ``PolicyEngine`` for the replicated client's tests (routing, push gate, faults):
it answers at once or after a delay, and every answer says which replica served it and
under which weights, so a test can see where each call went."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence

import torch

from langrl.engine.base import Generation, PolicyEngine, Sample, SamplingConfig


class FakeEngine(PolicyEngine):
    """Serves ``Sample.text = "<pid> <weight>"``; ``weight`` is the pushed ``w`` tensor's
    sum; a prompt whose first token is ``RAISE`` raises ``ValueError``."""

    RAISE = 666

    def __init__(self, delay_s: float, push_delay_s: float) -> None:
        self.delay_s = delay_s
        self.push_delay_s = push_delay_s
        self.weight = 0.0
        self.policy_version = 0
        self.tokenizer = None

    async def generate(self, prompt: Sequence[int] | str, sampling: SamplingConfig) -> Generation:
        ids = list(prompt) if not isinstance(prompt, str) else [1]
        if ids and ids[0] == self.RAISE:
            raise ValueError("fake engine: bad prompt")
        weight = self.weight  # the weights this call started under
        await asyncio.sleep(self.delay_s)
        samples = [
            Sample(token_ids=[7] * 3, text=f"{os.getpid()} {weight}", logprobs=[-1.0] * 3,
                   cumulative_logprob=-3.0, finish_reason="stop")
            for _ in range(sampling.n)
        ]  # fmt: skip
        return Generation(prompt_ids=ids, samples=samples, policy_version=self.policy_version)

    async def score(
        self, prompt_ids: Sequence[int], completions: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        return [[-1.0] * len(c) for c in completions]

    async def values(self, states: Sequence[Sequence[int]]) -> list[float]:
        return [self.weight for _ in states]

    async def load_weights_async(
        self, lm_state: Mapping[str, torch.Tensor], value_head_state: Mapping[str, torch.Tensor]
    ) -> int:
        await asyncio.sleep(self.push_delay_s)
        self.weight = float(lm_state["w"].sum())
        self.policy_version += 1
        return self.policy_version

    def load_weights(self, lm_state, value_head_state) -> int:  # noqa: ANN001
        raise NotImplementedError("the replica calls load_weights_async")

    def shutdown(self) -> None:
        pass


class FakeFactory:
    """``EngineFactory`` for ``ReplicatedEngine.create``: a ``FakeEngine`` per replica."""

    def __init__(self, delay_s: float = 0.0, push_delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.push_delay_s = push_delay_s

    async def __call__(self) -> FakeEngine:
        return FakeEngine(self.delay_s, self.push_delay_s)
