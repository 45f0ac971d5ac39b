"""``Learner.step`` against a bare forward + backward + AdamW step on the same tokens.

The bare step is what any trainer must do for one CISPO update of this batch: the Hugging
Face model's forward (full logits), log-softmax at the completion tokens, the CISPO loss
``-sg(min(ratio, eps_high)) * A * logp`` averaged over tokens, backward, gradient clipping and
an AdamW step, all in one micro-batch; and the same with a frozen reference model's forward
and the KL term (``c_kl 0.05``, which the reproduction's CISPO trains with). Then ``Learner.step`` in the configurations that
separate where any difference goes:

- ``learner (as bare)``: no reference model, no value loss, one micro-batch, one logits chunk:
  the learner doing the bare step's work (its own Python and bookkeeping on top);
- ``+ logits chunks``: the default ``logits_chunk_size`` (1024 positions per chunk);
- ``+ reference model``: ``c_kl 0.05``, the frozen reference's forward for the KL term;
- ``+ value loss``: ``c_value 1``, the value head trained beside the policy;
- ``micro-batches of 8``: the default ``micro_batch_size`` (gradient accumulation);
- ``reproduce.yaml cispo``: the configuration the CISPO reproduction row trains with.

The batch: ``--batch`` trajectories, real Countdown prompts of the train split encoded by
the policy's tokenizer, completions of random length (``--completion`` +- 40%) of random
tokens, behaviour logprobs near the model's, group-normalised advantages. Each row is the
median of ``--steps`` steps after one warm-up step, alternating the rows round by round so
that drifting load hits them all. ``torch`` uses ``--threads`` threads (default: the cores).
The CPU of the process (one core = 100%) is reported per row, so a row that waits is seen.

On a GPU (``--device cuda``) every row runs there and each step ends with a
``torch.cuda.synchronize()``; ``--dtype bfloat16`` runs the forward passes under autocast
with float32 master weights on both sides (the learner's ``dtype: bfloat16``).
``--model random-85m`` builds ``bench_vs_trl.py``'s random ~85M Qwen2 (hidden 768, 12
layers) in a temporary directory.

    nice -n 19 .venv/bin/python benchmarks/bench_learner.py
    nice -n 19 .venv/bin/python benchmarks/bench_learner.py --model path/to/model --batch 16
    python benchmarks/bench_learner.py --device cuda --dtype bfloat16 --model random-85m --completion 200
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import torch
from proc_cpu import CpuMeter
from transformers import AutoModelForCausalLM, AutoTokenizer

import langrl  # noqa: F401  (registers the envs)
from langrl.learner import Learner, LearnerConfig
from langrl.trajectory import Trajectory


def make_batch(model_path: str, size: int, completion: int, seed: int) -> list[Trajectory]:
    """``size`` trajectories on real Countdown prompts with random completions."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    env = gym.make("Countdown-v0")
    rng = random.Random(seed)
    vocab = len(tokenizer)
    batch = []
    for i in range(size):
        _, info = env.reset(seed=seed + i)
        prompt = tokenizer(info["prompt"], add_special_tokens=False)["input_ids"]
        length = max(1, round(completion * rng.uniform(0.6, 1.4)))
        ids = [rng.randrange(1, vocab) for _ in range(length)]
        logprobs = [-rng.uniform(0.5, 4.0) for _ in ids]
        reward = rng.choice([-1.0, -0.5, 0.0, 1.0])
        batch.append(Trajectory(prompt, ids, logprobs, reward, temperature=0.8))
    mean = statistics.fmean(t.reward for t in batch)
    std = statistics.pstdev(t.reward for t in batch) or 1.0
    for t in batch:  # group-relative advantages, as CISPO hands them over
        t.advantages = [(t.reward - mean) / std] * len(t.completion_ids)
    return batch


class BareStep:
    """The minimum a trainer does for one CISPO step on ``batch``: no langrl code. With
    ``c_kl`` > 0 also a frozen reference model's forward and the k3 KL term (as TRL's
    ``beta``), the work ``c_kl`` asks of the learner."""

    def __init__(
        self,
        model_path: str,
        lr: float,
        eps_high: float,
        c_kl: float = 0.0,
        device: str = "cpu",
        dtype: str = "float32",
    ) -> None:
        load = AutoModelForCausalLM.from_pretrained
        self.model = load(model_path, dtype=torch.float32).to(device).eval()
        self.ref = load(model_path, dtype=torch.float32).to(device).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr)
        self.eps_high, self.c_kl, self.device = eps_high, c_kl, device
        self.autocast = (
            (lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16))
            if dtype == "bfloat16"
            else contextlib.nullcontext
        )

    def __call__(self, batch: list[Trajectory]) -> None:
        width = max(t.num_tokens for t in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width - 1, dtype=torch.bool)
        old = torch.zeros(len(batch), width - 1)
        adv = torch.zeros(len(batch), width - 1)
        temp = torch.ones(len(batch), 1, 1)
        for row, t in enumerate(batch):
            seq = t.prompt_ids + t.completion_ids
            p, n = len(t.prompt_ids), len(t.completion_ids)
            ids[row, : len(seq)] = torch.tensor(seq)
            attention[row, : len(seq)] = 1
            mask[row, p - 1 : p - 1 + n] = True
            old[row, p - 1 : p - 1 + n] = torch.tensor(t.behaviour_logprobs)
            adv[row, p - 1 : p - 1 + n] = torch.tensor(t.advantages)
            temp[row] = t.temperature
        ids, attention, mask, old, adv, temp = (
            x.to(self.device) for x in (ids, attention, mask, old, adv, temp)
        )
        with self.autocast():
            logits = self.model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
        logp = torch.log_softmax(logits / temp, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        weight = torch.exp(logp.detach() - old).clamp(max=self.eps_high)
        loss = -(weight * adv * logp)[mask].sum() / mask.sum()
        if self.c_kl > 0:
            with torch.no_grad(), self.autocast():
                ref = self.ref(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
                ref_logp = torch.log_softmax(ref / temp, -1).gather(-1, ids[:, 1:, None])
            delta = ref_logp.squeeze(-1) - logp
            kl = torch.exp(delta) - delta - 1  # k3, as the learner's
            loss = loss + self.c_kl * kl[mask].sum() / mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def variants(base: LearnerConfig, batch: int) -> list[tuple[str, LearnerConfig]]:
    """The learner rows: each adds one piece of the learner's work to the bare step's."""
    bare = replace(base, c_kl=0.0, c_value=0.0, micro_batch_size=batch, logits_chunk_size=None)
    return [
        ("learner (as bare)", bare),
        ("+ logits chunks of 1024", replace(bare, logits_chunk_size=1024)),
        ("+ reference model (c_kl 0.05)", replace(bare, c_kl=0.05)),
        ("+ value loss (c_value 1)", replace(bare, c_value=1.0)),
        ("micro-batches of 8", replace(bare, micro_batch_size=8)),
        (
            "reproduce.yaml cispo",
            replace(base, c_kl=0.05, c_value=0.0, micro_batch_size=32, lr=2e-5),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=None, help="a model directory, or random-85m (default: the tiny policy)"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--completion", type=int, default=50, help="mean completion tokens")
    parser.add_argument("--steps", type=int, default=7, help="timed steps per row")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="torch device of every row, e.g. cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None or args.model == "random-85m":
            from bench_vs_trl import model_path  # benchmarks/, this script's directory

            args.model = model_path("tiny" if args.model is None else "100m", Path(tmp))
        run(args)


def run(args: argparse.Namespace) -> None:
    """Build the batch, time every row, print the table."""
    batch = make_batch(args.model, args.batch, args.completion, seed=0)
    tokens = sum(t.num_tokens for t in batch)
    trained = sum(len(t.completion_ids) for t in batch)
    print(
        f"model {args.model}\nbatch {args.batch} trajectories, {tokens} tokens "
        f"({trained} trained), torch threads {torch.get_num_threads()}, "
        f"device {args.device}, {args.dtype}\n"
    )

    base = LearnerConfig(lr=2e-5, device=args.device, dtype=args.dtype)
    on = {"device": args.device, "dtype": args.dtype}
    bare_step = BareStep(args.model, 2e-5, 5.0, **on)
    bare_kl = BareStep(args.model, 2e-5, 5.0, c_kl=0.05, **on)
    rows: list[tuple[str, Callable[[], object]]] = [
        ("bare forward+backward+AdamW", lambda: bare_step(batch)),
        ("bare + reference model (KL 0.05)", lambda: bare_kl(batch)),
    ]
    for name, config in variants(base, args.batch):
        learner = Learner(args.model, config)
        rows.append((name, (lambda lr=learner: lr.step(copy.deepcopy(batch)))))

    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    cpu: dict[str, float] = {name: 0.0 for name, _ in rows}
    for _, fn in rows:  # warm-up
        fn()
    for _ in range(args.steps):
        for name, fn in rows:
            meter = CpuMeter().start()
            start = time.perf_counter()
            fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()  # the step's kernels are queued, not done
            times[name].append(time.perf_counter() - start)
            cpu[name] += sum(meter.stop().values())

    bare = statistics.median(times[rows[0][0]])
    print(f"{'step':<34}{'median ms':>10}{'x bare':>8}{'tok/s':>9}{'CPU':>6}")
    for name, _ in rows:
        t = statistics.median(times[name])
        share = cpu[name] / sum(times[name])
        print(f"{name:<34}{1000 * t:>10.1f}{t / bare:>7.2f}x{tokens / t:>9.0f}{100 * share:>5.0f}%")
    ours = statistics.median(times["reproduce.yaml cispo"])
    same_work = statistics.median(times[rows[1][0]])
    print(
        f"\nLearner.step (reproduce.yaml cispo) / bare step with the same KL term: "
        f"{ours / same_work:.2f}x (/ bare step without it: {ours / bare:.2f}x)"
    )


if __name__ == "__main__":
    main()
