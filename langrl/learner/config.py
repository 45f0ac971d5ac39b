"""Configuration of the shared torch learner (one dataclass, validated at construction).

Pure: importing or validating it imports no torch (the learner maps ``dtype`` to a torch dtype).

Field documentation follows TRL's ``GRPOConfig`` habit: meaning, the default's effect, valid
values and the paper each setting comes from. References:

- CISPO: MiniMax-M1 technical report (MiniMax, 2025), "CISPO" objective, section 3.1.
- k3 KL estimator: J. Schulman, "Approximating KL Divergence" (blog note, 2020).
- Loss normalisation: DAPO (token-level) vs. GRPO, Shao et al. "DeepSeekMath" (2024)
  (per-sequence mean, then mean over sequences).
- Coefficients c_policy = c_value = 1.0, c_kl = 0.05 and eps_high = 5.0: the
  tree-search-distillation paper this project reproduces (see ``docs/design.md``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from langrl.checks import check, check_ints

#: Policy-loss names ``LearnerConfig.policy_loss`` accepts (keys of ``losses.POLICY_LOSSES``).
POLICY_LOSS_NAMES: tuple[str, ...] = ("cispo",)
#: Loss-normalisation modes (see ``losses.masked_mean``).
NORMALIZATION_MODES: tuple[str, ...] = ("token", "sequence")
#: Compute dtypes (torch dtype names); weights and optimizer state always stay float32.
DTYPES: tuple[str, ...] = ("float32", "bfloat16")
#: Torch device types ``LearnerConfig.device`` accepts, each optionally followed by ``:index``.
DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda", "mps", "xpu", "hpu", "npu")
_DEVICE = re.compile(rf"({'|'.join(DEVICE_TYPES)})(:\d+)?")
_OWNER = "LearnerConfig"


@dataclass
class LearnerConfig:
    """Hyperparameters of ``langrl.learner.Learner``; every agent shares this one learner."""

    # --- optimisation -------------------------------------------------------------------------

    lr: float = 1e-5
    """AdamW learning rate (after warm-up). Must be > 0. 1e-5 is a safe start for
    1.5B-parameter policies; the tiny CPU policy tolerates about 1e-4."""

    warmup_steps: int = 0
    """Optimiser steps over which the policy (LM) learning rate rises linearly from
    ``lr / warmup_steps`` to ``lr``; constant afterwards. Counted from the first step that
    trains the policy, i.e. after ``value_warmup_steps``. The value head is not warmed up (it
    runs at ``value_lr`` from its first step). 0 (default) = no warm-up. Must be >= 0."""

    weight_decay: float = 0.0
    """AdamW decoupled weight decay (Loshchilov & Hutter, 2019). 0.0 (default) = none, the
    usual choice for RL fine-tuning from a pretrained policy. Applied to every trained parameter
    (norms, biases and the value head included). Must be >= 0."""

    adam_beta1: float = 0.9
    """AdamW first-moment decay. Default 0.9 (torch / TRL default). Must be in [0, 1)."""

    adam_beta2: float = 0.999
    """AdamW second-moment decay. Default 0.999 (torch / TRL default). Must be in [0, 1)."""

    adam_eps: float = 1e-8
    """AdamW denominator epsilon. Default 1e-8 (torch / TRL default). Must be > 0."""

    max_grad_norm: float | None = 1.0
    """Clip the global gradient L2 norm to this value before each step. 1.0 (default, as in
    TRL) bounds the damage of an outlier batch; ``None`` = no clipping (the norm is still
    measured and logged as ``train/grad_norm``). Must be > 0 or None."""

    micro_batch_size: int = 8
    """Trajectories per forward/backward pass. A ``step`` over a larger batch accumulates
    gradients over ``ceil(len(batch) / micro_batch_size)`` passes and takes ONE optimiser step;
    the result equals the full-batch gradient (normalisers are computed over the whole batch).
    Lower it to save memory; it never changes the maths. Must be >= 1."""

    # --- loss ---------------------------------------------------------------------------------

    policy_loss: str = "cispo"
    """Policy-gradient objective, a key of ``langrl.learner.losses.POLICY_LOSSES``:
    ``"cispo"`` (default and only one so far; MiniMax-M1's clipped-IS-weight policy
    optimisation, used by the tree-search-distillation paper for every agent)."""

    eps_high: float = 5.0
    """CISPO cap on the importance-sampling weight: the weight is ``sg(min(ratio, eps_high))``.
    5.0 (default) is the paper's value; tokens above the cap still get gradient, only scaled
    down (unlike PPO, which drops them). Must be >= 1 (a cap below 1 would shrink even
    on-policy tokens)."""

    c_policy: float = 1.0
    """Weight of the policy loss in ``total = c_policy*policy + c_value*value + c_kl*kl``.
    1.0 (default) is the paper's value. Must be >= 0."""

    c_value: float = 1.0
    """Weight of the value loss ``MSE(V(s_t), reward)``. 1.0 (default) is the paper's value;
    0 stops training the value head (agents that supply their own advantages do not need it,
    and default it to 0, as CISPO does). Must be >= 0."""

    c_kl: float = 0.05
    """Weight of the k3 estimate of ``KL(pi || pi_ref)`` against the frozen initial policy.
    0.05 (default) is the paper's value; 0 disables the term AND skips loading the reference
    model (saves one model's memory and one forward pass per step). Must be >= 0."""

    loss_normalization: str = "token"
    """How per-token losses become one number. ``"token"`` (default; DAPO / TRL ``"dapo"``):
    sum over every loss token of the batch divided by their count, so long completions weigh
    more in total. ``"sequence"`` (GRPO): mean over each sequence's tokens, then mean over
    sequences, so every completion weighs the same whatever its length."""

    # --- value head ---------------------------------------------------------------------------

    value_lr: float | None = None
    """Learning rate of the value head's own AdamW parameter group (constant, no warm-up).
    ``None`` (default) = ``lr``. Adam moves each weight by about its lr per step, so a policy
    lr (1e-6 to 1e-5) leaves a fresh head near its initial value for hundreds of steps and
    ``A = r - V`` stays the raw reward. Measured on the tiny policies (random, hidden 128 and
    256), V first moved by about ``0.15 * value_lr * hidden_size`` per step; with rewards
    around -0.5, ``train/value_mean`` reached them after about 6 steps at 1e-3 (hidden 256)
    and overshot by up to 0.2 before settling (Adam momentum). Must be > 0 or None."""

    value_warmup_steps: int = 0
    """The first N optimiser steps train ONLY the value head: the policy and KL terms are left
    out and the LM runs without gradient (the head reads its hidden states detached), so LM
    weights stay bit-identical, the served policy is unchanged and rollouts stay on-policy
    while the baseline is fitted. ``train/lr`` (the policy's) reads 0 meanwhile. 0 (default) =
    train everything from step 0 (the paper). Ignored when ``c_value`` is 0 (no value head to
    fit, e.g. CISPO), so one preset serves every agent; see ``value_warmup``. Must be >= 0."""

    # --- numerics -----------------------------------------------------------------------------

    dtype: str = "float32"
    """Compute dtype of forward/backward: ``"float32"`` (default) or ``"bfloat16"`` (autocast;
    about half the activation memory on GPUs). Weights and optimizer state stay float32
    (master weights), and the output layer runs in float32 outside autocast on the float32
    hidden state (``policy_model.lm_head_fp32``, as TRL's ``cast_lm_head_to_fp32``), so
    the logits themselves are float32, not bf16 logits upcast after rounding, and small
    logprob differences in the ratio and the KL are not lost."""

    logits_chunk_size: int | None = 1024
    """Completion positions whose full-vocabulary logits are computed at once. The learner
    never materialises logits for prompt or padding positions, and projects the trained
    positions through the output layer this many at a time, each chunk recomputed during
    backward (activation checkpointing), so logits memory peaks at about five float32
    ``logits_chunk_size x vocab`` temporaries (``benchmarks/bench_learner_memory.py`` measures
    it) instead of growing with
    ``batch x sequence``. The maths is unchanged; the price is one extra output-layer matmul
    per trained token when a micro-batch needs several chunks. ``None`` = one chunk of all
    trained positions of a micro-batch, kept for backward (no recomputation; peak
    ``trained tokens x vocab``). Must be >= 1 or None."""

    device: str = "cpu"
    """Torch device of the trained and reference models, e.g. ``"cpu"`` (default),
    ``"cuda"``, ``"cuda:1"``."""

    num_threads: int | None = None
    """Torch intra-op threads of the trainer's process while the learner runs on CPU (set by
    ``TrainingRun`` and given back at its end; the HF engine, in the same process, uses them
    too). ``None`` (default): torch's own default (one per core). Fewer threads leave cores
    to an engine on the same CPUs, but on 2 cores 1 thread made the reproduction's CISPO
    slower, 0.83x the samples/s of 2 (``benchmarks/bench_train_balance.py``): the cores
    were not the bound (see the benchmarks page). Ignored on CUDA and by learner ranks
    (``rank_cpus`` sets theirs). Must be >= 1 or None."""

    seed: int = 0
    """Seeds the value head's initialisation when ``model_path`` has none saved. The update
    itself is deterministic (dropout is off), so this is the only randomness."""

    # --- data parallelism ---------------------------------------------------------------------

    world_size: int = 1
    """Data-parallel learner ranks. 1 (default) = the learner runs in the trainer's process.
    N > 1 runs N ranks as Ray actors (``langrl.distributed.learner_group.LearnerGroup``, on
    the cluster ``cluster:`` names), each on its own ``device``: every rank gets the whole
    batch, trains every N-th micro-batch, and the gradients are summed across ranks
    (torch.distributed: gloo on CPU, NCCL on CUDA) before one identical optimiser step on
    every rank. The update equals one rank's up to float summation order; only the wall time
    changes. With N > 1 a CUDA ``device`` must carry no index (Ray gives each rank its own
    GPU, seen as ``cuda``). ``Learner`` itself does not read it (it follows
    ``torch.distributed``). Must be >= 1."""

    rank_cpus: float = 1.0
    """Logical CPUs each learner rank reserves in Ray when ``world_size`` > 1 (its actor's
    ``num_cpus``; a CUDA rank also reserves one GPU). Ray also gives the rank
    ``max(1, floor(rank_cpus))`` OpenMP threads (torch's intra-op threads) unless
    ``OMP_NUM_THREADS`` is set. 1.0 (default) suits GPU ranks; CPU ranks compute faster with
    more. Must be > 0."""

    # The sampling temperature is not set here: each ``Trajectory`` carries the temperature it
    # was sampled at, and the learner divides that trajectory's logits by it.

    def __post_init__(self) -> None:
        check_ints(self, {"warmup_steps": 0, "value_warmup_steps": 0, "micro_batch_size": 1})
        check_ints(self, {"logits_chunk_size": 1, "num_threads": 1}, optional=True)
        check_ints(self, {"seed": None, "world_size": 1})
        check(self.lr > 0, _OWNER, f"lr must be > 0, got {self.lr}")
        check(
            self.value_lr is None or self.value_lr > 0,
            _OWNER,
            f"value_lr must be > 0 or None (= lr), got {self.value_lr}",
        )
        check(self.weight_decay >= 0, _OWNER, f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            check(0 <= value < 1, _OWNER, f"{name} must be in [0, 1), got {value}")
        check(self.adam_eps > 0, _OWNER, f"adam_eps must be > 0, got {self.adam_eps}")
        check(
            self.max_grad_norm is None or self.max_grad_norm > 0,
            _OWNER,
            f"max_grad_norm must be > 0 or None (no clipping), got {self.max_grad_norm}",
        )
        check(
            self.policy_loss in POLICY_LOSS_NAMES,
            _OWNER,
            f"policy_loss must be one of {POLICY_LOSS_NAMES}, got {self.policy_loss!r}",
        )
        check(
            self.eps_high >= 1,
            _OWNER,
            f"eps_high must be >= 1 (CISPO's IS-weight cap), got {self.eps_high}",
        )
        for name in ("c_policy", "c_value", "c_kl"):
            value = getattr(self, name)
            check(
                value >= 0 and math.isfinite(value),
                _OWNER,
                f"{name} must be finite and >= 0, got {value}",
            )
        check(
            self.c_policy + self.c_value + self.c_kl > 0,
            _OWNER,
            f"at least one of c_policy, c_value, c_kl must be > 0 (got {self.c_policy}, "
            f"{self.c_value}, {self.c_kl}): the loss would be identically zero",
        )
        check(
            self.loss_normalization in NORMALIZATION_MODES,
            _OWNER,
            f"loss_normalization must be one of {NORMALIZATION_MODES}, "
            f"got {self.loss_normalization!r}",
        )
        check(self.dtype in DTYPES, _OWNER, f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        check(
            isinstance(self.device, str) and _DEVICE.fullmatch(self.device) is not None,
            _OWNER,
            f"device {self.device!r} is not a torch device: use one of {DEVICE_TYPES}, "
            "optionally with ':<index>' (e.g. 'cuda:1')",
        )
        check(
            self.world_size == 1 or not self.device.startswith("cuda:"),
            _OWNER,
            f"device {self.device!r} names one GPU but world_size is {self.world_size}: use "
            "'cuda' (Ray gives each learner rank its own GPU)",
        )
        check(
            isinstance(self.rank_cpus, (int, float))
            and not isinstance(self.rank_cpus, bool)
            and math.isfinite(self.rank_cpus)
            and self.rank_cpus > 0,
            _OWNER,
            f"rank_cpus must be a number > 0, got {self.rank_cpus!r}",
        )
        check(
            not (self.dtype == "bfloat16" and self.device.split(":")[0] == "mps"),
            _OWNER,
            f"dtype='bfloat16' is not supported with device={self.device!r}; use 'float32'",
        )

    @property
    def value_warmup(self) -> int:
        """Steps that train only the value head: ``value_warmup_steps``, or 0 when
        ``c_value`` is 0 (nothing to fit)."""
        return self.value_warmup_steps if self.c_value > 0 else 0

    def policy_loss_kwargs(self) -> dict[str, float]:
        """Hyperparameters of the selected policy loss, as keyword arguments of its function."""
        per_loss: dict[str, dict[str, float]] = {"cispo": {"eps_high": self.eps_high}}
        return per_loss[self.policy_loss]

    @property
    def rank_gpus(self) -> int:
        """GPUs one learner rank reserves: one on CUDA, else none."""
        return 1 if self.device.startswith("cuda") else 0

    def ray_demand(self) -> tuple[float, float]:
        """``(CPUs, GPUs)`` all ``world_size`` ranks reserve in Ray together."""
        return self.world_size * self.rank_cpus, float(self.world_size * self.rank_gpus)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (for checkpoints and the hyperparameter table)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LearnerConfig:
        """Inverse of ``to_dict``; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LearnerConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)
