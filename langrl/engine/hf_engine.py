"""Plain-transformers policy server: the same interface as ``VLLMEngine``, no vLLM needed.

For machines where vLLM does not install. Concurrent ``generate`` calls are micro-batched:
requests are collected for ``EngineConfig.hf_batch_wait_ms`` (and while the previous batch
runs), their ``n`` samples become rows of one left-padded batch, and one sampling loop with
a KV cache runs in the model's worker thread. No continuous batching: a batch runs until
its last row finishes, and requests arriving meanwhile wait for the next one.

Sampling matches vLLM's conventions: per-token logprobs of the *processed* distribution
(temperature, then top-p), stop strings kept in the output (``find_stop``; text cut at the
stop, every sampled id kept, ``Sample.overhang`` the difference), EOS kept in the token ids
but not in the text, ``finish_reason`` ``"stop"``/``"length"``. A request with a
seed draws from its own ``torch.Generator``, so its samples do not depend on what else is
in the batch. ``values``/``score``/``load_weights`` are ``ServedEngine``'s, on the same
``PolicyValueModel`` that generates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from langrl.engine.base import Generation, Sample, SamplingConfig
from langrl.engine.common import (
    Coalescer,
    ServedEngine,
    check_model_path,
    find_stop,
    load_value_model,
    stop_overhang,
)
from langrl.engine.config import EngineConfig
from langrl.policy_model import PolicyValueModel

Request = tuple[list[int], SamplingConfig]


@dataclass
class _Row:
    """One sample being generated."""

    request: int
    prompt: list[int]
    sampling: SamplingConfig
    generator: torch.Generator | None
    max_new: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    stop_reason: str | int | None = None


def processed_logprobs(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Logprobs of the sampling distribution: ``logits / T``, then top-p, then log-softmax.

    logits (B, V), temperature (B,), top_p (B,). Tokens outside the nucleus get ``-inf``.
    """
    scaled = logits.float() / temperature[:, None]  # (B, V)
    if bool((top_p < 1).any()):
        sorted_logits, order = scaled.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p (the first always stays).
        drop = (probs.cumsum(-1) - probs) >= top_p[:, None]
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.empty_like(scaled).scatter_(-1, order, sorted_logits)
    return torch.log_softmax(scaled, dim=-1)


class HFEngine(ServedEngine):
    """``PolicyEngine`` on a transformers ``PolicyValueModel``. Create with
    ``await HFEngine.create(cfg)`` on the loop that will use it (or via ``SyncEngine``)."""

    def __init__(self, config: EngineConfig, model: PolicyValueModel, tokenizer: Any) -> None:
        super().__init__(config, model, tokenizer)
        self._rng = torch.Generator().manual_seed(config.seed)
        self._batches: Coalescer[Request, list[Sample]] = Coalescer(
            self._generate_batch, self._executor, wait_s=config.hf_batch_wait_ms / 1000
        )
        eos = model.lm.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self._eos_ids = eos_ids
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @classmethod
    async def create(cls, config: EngineConfig) -> HFEngine:
        """Check the path and load the model; raises ``EngineStartError`` on failure."""
        config = check_model_path(config)
        model, tokenizer = await asyncio.to_thread(load_value_model, config)
        return cls(config, model, tokenizer)

    async def generate(self, prompt: Sequence[int] | str, sampling: SamplingConfig) -> Generation:
        self._check_open()
        ids = self._prompt_ids(prompt)
        async with self._gate.shared():
            version = self.policy_version
            (samples,) = await self._batches.submit([(ids, sampling)])
        return Generation(prompt_ids=ids, samples=samples, policy_version=version)

    def shutdown(self) -> None:
        if not self._closed:
            self._release_shared()

    # --- the batched sampling loop (worker thread) ---

    def _generate_batch(self, requests: list[Request]) -> list[list[Sample]]:
        """Run ``requests`` in row groups of at most ``max_num_seqs`` samples."""
        results: list[list[Sample]] = [[] for _ in requests]
        group: list[int] = []
        rows = 0
        for i, (_, s) in enumerate(requests):
            if group and rows + s.n > self.config.max_num_seqs:
                self._run_group(requests, group, results)
                group, rows = [], 0
            group.append(i)
            rows += s.n
        if group:
            self._run_group(requests, group, results)
        return results

    @torch.no_grad()
    def _run_group(
        self, requests: list[Request], group: list[int], results: list[list[Sample]]
    ) -> None:
        lm = self.model.lm
        device = next(lm.parameters()).device
        rows: list[_Row] = []
        for r in group:
            prompt, s = requests[r]
            gen = torch.Generator().manual_seed(s.seed) if s.seed is not None else None
            max_new = min(s.max_tokens, self.config.max_model_len - len(prompt))
            rows.extend(_Row(r, prompt, s, gen, max_new) for _ in range(s.n))
        width = max(len(row.prompt) for row in rows)
        ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)  # (B, P)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):  # left-pad so that every row's next token is last
            ids[i, width - len(row.prompt) :] = torch.tensor(row.prompt)
            mask[i, width - len(row.prompt) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        # Positions count real tokens only, so a row's numbers do not depend on its padding.
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
        temperature = torch.tensor([row.sampling.temperature for row in rows], device=device)
        top_p = torch.tensor([row.sampling.top_p for row in rows], device=device)

        out = lm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        last_pos = pos[:, -1:]  # (B, 1)
        for _ in range(max(row.max_new for row in rows)):
            logp = processed_logprobs(out.logits[:, -1], temperature, top_p)  # (B, V)
            tokens = self._sample(logp, rows)  # (B,)
            token_logp = logp.gather(-1, tokens[:, None]).squeeze(-1)  # (B,)
            for row, tok, lp in zip(
                rows, tokens.tolist(), token_logp.tolist(), strict=True
            ):  # sync point
                if row.finish_reason is None:
                    self._append(row, tok, lp)
            if all(row.finish_reason is not None for row in rows):
                break
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
            last_pos = last_pos + 1
            out = lm(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=last_pos,
                past_key_values=out.past_key_values,
                use_cache=True,
            )
        for row in rows:
            if not row.sampling.stop:  # rows with stop strings keep their text up to date
                row.text = self._decode(row.tokens)
            results[row.request].append(
                Sample(
                    token_ids=row.tokens,
                    text=row.text,
                    logprobs=row.logprobs,
                    cumulative_logprob=float(sum(row.logprobs)),
                    finish_reason=row.finish_reason or "length",
                    stop_reason=row.stop_reason,
                    overhang=stop_overhang(self.tokenizer, row.tokens, row.text, row.stop_reason),
                )
            )

    def _sample(self, logp: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        """Gumbel-max sampling, ``argmax(logp - log(E))`` with ``E ~ Exp(1)``: each seeded
        request draws its noise from its own generator, the rest from the engine's."""
        noise = torch.empty_like(logp)  # (B, V)
        shared = [i for i, row in enumerate(rows) if row.generator is None]
        if shared:
            noise[shared] = torch.empty((len(shared), logp.shape[-1])).exponential_(
                generator=self._rng
            )
        for i, row in enumerate(rows):
            if row.generator is not None:
                noise[i] = torch.empty(logp.shape[-1]).exponential_(generator=row.generator)
        return (logp - noise.log()).argmax(-1)

    def _append(self, row: _Row, token: int, logprob: float) -> None:
        row.tokens.append(token)
        row.logprobs.append(logprob)
        if token in self._eos_ids:
            row.finish_reason = "stop"
        elif row.sampling.stop:
            before = len(row.text)
            row.text = self._decode(row.tokens)
            hit = find_stop(row.text, row.sampling.stop, before)
            if hit is not None:
                row.text = row.text[: hit[0]]
                row.finish_reason, row.stop_reason = "stop", hit[1]
        if row.finish_reason is None and len(row.tokens) >= row.max_new:
            row.finish_reason = "length"

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)
