"""TRL's side of ``benchmarks/bench_vs_trl.py``: ``GRPOTrainer(loss_type="cispo")`` on CPU.

Not run by hand: ``bench_vs_trl.py`` starts it with the Python of its TRL venv
(``.bench/trl-venv``, which sees the project's torch, transformers and langrl), as

    .bench/trl-venv/bin/python benchmarks/trl_grpo_side.py SPEC.json OUT.json

``SPEC.json`` holds the model directory, the train-split problem indices in langrl's task
order, the env kwargs and the shared hyperparameters (``bench_vs_trl.trl_spec``). Prompts
are the env's plain prompt (what langrl's ``PolicyEngine.encode_prompt`` encodes without a
chat template) and the reward is langrl's own grader (``langrl.agents.rollout.
grade_completion`` on the env), so both sides do the same work.

Timing: a ``TrainerCallback`` times each optimiser step (``on_step_begin`` to
``on_step_end``); the trainer's ``_generate`` (tokenize, HF ``generate``, decode) and
``_calculate_rewards`` are wrapped on the instance and their time is the step's generation;
the rest is the update, which includes TRL's no-grad forward for the old logprobs (timed
apart by wrapping ``_get_per_token_logps_and_entropies`` when grad is off). A ``CpuMeter``
covers the timed steps (after ``warmup`` steps) of this process (TRL spawns none). Writes
``OUT.json``: per-step records, the CPU seconds and the meter's wall time.
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import trl
from datasets import Dataset
from proc_cpu import CpuMeter  # benchmarks/, this script's directory
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from langrl.agents.rollout import grade_completion
from langrl.envs import action_tags, make_env


def stop_token_ids(tokenizer: Any, stops: tuple[str, ...]) -> list[int]:
    """The env's stop strings as token ids: langrl stops after ``</answer>``; HF ``generate``
    in TRL stops only at EOS ids, so each stop string must be ONE token (the tiny tokenizer's
    tags are). Given as extra EOS ids, TRL also cuts the completion right after it."""
    ids = []
    for stop in stops:
        encoded = tokenizer(stop, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise SystemExit(f"stop string {stop!r} is {len(encoded)} tokens, not one")
        ids.append(encoded[0])
    return ids


def main(spec_path: str, out_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    started = time.perf_counter()
    torch.manual_seed(spec["seed"])
    env = make_env(spec["env_id"], spec["env_kwargs"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)

    prompts, starts = [], {}
    for index in spec["indices"]:
        _, info = env.reset(options={"index": index})
        prompts.append(info["prompt"])
        starts[index] = env.get_state()
    # TRL tokenizes with add_special_tokens=True, langrl's encode_prompt with False.
    plain = tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
    if tokenizer(prompts[0])["input_ids"] != plain:
        raise SystemExit("the tokenizer adds special tokens: TRL's prompt ids would differ")

    eos = tokenizer.eos_token_id
    model.generation_config.eos_token_id = [
        eos,
        *stop_token_ids(tokenizer, action_tags(env).completion_stop),
    ]
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    def countdown_reward(prompts, completions, index, **_: Any) -> list[float]:
        """langrl's grader: the env's reward of each completion from its task's start."""
        return [
            grade_completion(env, starts[i], text)[0]
            for text, i in zip(completions, index, strict=True)
        ]

    steps, warmup = spec["steps"], spec["warmup_steps"]
    with tempfile.TemporaryDirectory() as out_dir:
        config = GRPOConfig(
            output_dir=out_dir,
            use_cpu=True,
            bf16=False,
            fp16=False,
            use_vllm=False,
            loss_type="cispo",
            epsilon_high=spec["eps_high"],
            beta=spec["kl"],
            scale_rewards="none",  # langrl's CISPO default: r - mean(r), no std scaling
            num_iterations=1,
            temperature=spec["temperature"],
            top_p=1.0,
            top_k=0,
            max_completion_length=spec["max_tokens"],
            num_generations=spec["group_size"],
            per_device_train_batch_size=spec["batch_size"],
            gradient_accumulation_steps=1,
            steps_per_generation=spec["group_size"] * spec["num_prompts"] // spec["batch_size"],
            learning_rate=spec["lr"],
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            gradient_checkpointing=False,  # TRL defaults to True; langrl keeps the activations
            max_steps=steps,
            shuffle_dataset=False,  # the rows are already in langrl's task order
            seed=spec["seed"],
            logging_steps=steps,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
            remove_unused_columns=False,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=countdown_reward,
            args=config,
            train_dataset=Dataset.from_dict({"prompt": prompts, "index": list(spec["indices"])}),
            processing_class=tokenizer,
        )

        acc: dict[str, float] = {}

        def timed(name: str, fn: Callable, only_no_grad: bool = False) -> Callable:
            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if only_no_grad and torch.is_grad_enabled():
                    return fn(*args, **kwargs)
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    acc[name] = acc.get(name, 0.0) + time.perf_counter() - start

            return wrapper

        trainer._generate = timed("gen_s", trainer._generate)
        trainer._calculate_rewards = timed("reward_s", trainer._calculate_rewards)
        trainer._get_per_token_logps_and_entropies = timed(
            "old_logp_s", trainer._get_per_token_logps_and_entropies, only_no_grad=True
        )
        prepare = trainer._prepare_inputs

        def prepare_and_count(batch: Any) -> Any:
            inputs = prepare(batch)
            acc["samples"] = acc.get("samples", 0) + int(inputs["completion_mask"].shape[0])
            acc["tokens"] = acc.get("tokens", 0) + int(inputs["completion_mask"].sum())
            lengths = inputs["completion_mask"].sum(-1)  # (B,): each sample's, EOS included
            acc["longest"] = max(acc.get("longest", 0), int(lengths.max()))
            return inputs

        trainer._prepare_inputs = prepare_and_count

        records: list[dict[str, float]] = []
        meter = CpuMeter()
        result: dict[str, Any] = {}

        class StepTimer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                acc.clear()
                self.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                wall = time.perf_counter() - self.start
                gen = acc.get("gen_s", 0.0) + acc.get("reward_s", 0.0)
                records.append({
                    "step": state.global_step,
                    "step_s": wall,
                    "gen_s": gen,
                    "update_s": wall - gen,
                    "sync_s": 0.0,
                    "old_logp_s": acc.get("old_logp_s", 0.0),
                    "samples": acc.get("samples", 0),
                    "tokens": acc.get("tokens", 0),
                    "longest": acc.get("longest", 0),
                })  # fmt: skip
                if state.global_step == warmup:
                    meter.start()
                elif state.global_step == steps:
                    result["cpu"] = meter.stop()
                    result["wall_s"] = meter.wall_s

        trainer.add_callback(StepTimer())
        result["startup_s"] = time.perf_counter() - started  # imports not included
        trainer.train()

    result.update(
        steps=records,
        params=sum(p.numel() for p in model.parameters()),
        version=f"trl {trl.__version__}",
    )
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
