"""Warm-start the tiny policy on solver traces, and cache the result under ``$LANGRL_HOME``.

RL needs a starting policy that already writes the ``<step>...</step><answer>...</answer>``
format and solves some, not all, Countdown problems (the reference paper starts its RL from
an instruct model at 3.1%). No model can be downloaded here, so we make one:
``build_policy`` writes a random tiny Qwen2 (``langrl.tiny.model``) and trains it with
supervised next-token prediction on step-by-step solutions from the Countdown solver
(``langrl.envs.countdown.solution_steps``) for problems of the TRAIN split, a share of them
deliberately imperfect (see ``make_trace``). The capacity and training budget of the tiny
model, plus those traces, keep it far from perfect. The calibration is in docs/design.md.

``ensure_policy(preset)`` builds such a policy once per (preset, config, format version)
and reuses it; concurrent callers are serialised by a file lock, and a build becomes
visible only through an atomic rename of a finished temporary folder.

The default policy also ships with the package (``SHIPPED_POLICIES``, written by
``scripts/build_tiny_policy.py --ship``): when the shipped build's record has the config
hash asked for (which covers ``FORMAT_VERSION``) and its files have their recorded sha256,
``ensure_policy`` copies it into the cache instead of building (a second, not 10-20 minutes).
A changed config or format version builds as before. ``tests/tiny/test_shipped_policy.py``
checks that the shipped build is what the current code builds.

    >>> path = ensure_policy("test")          # seconds; for tests that need the format
    >>> path = ensure_policy("default")       # the shipped build, copied into the cache
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from langrl.envs.countdown import (
    CountdownTask,
    format_prompt,
    grade_answer,
    load_countdown,
    solution_steps,
)
from langrl.policy_model import PolicyValueModel
from langrl.tiny.model import PRESETS, build_random_policy
from langrl.tiny.tokenizer import build_tokenizer

__all__ = [
    "FORMAT_VERSION",
    "POLICY_CONFIGS",
    "RECORD_FILE",
    "SHIPPED_POLICIES",
    "WarmStartConfig",
    "build_policy",
    "config_hash",
    "default_policy_path",
    "ensure_policy",
    "file_hashes",
    "iter_traces",
    "langrl_home",
    "make_trace",
    "shipped_policy",
    "trace_batches",
    "warm_start",
]

logger = logging.getLogger(__name__)

#: Bump when the meaning of a cached policy changes without its config changing (tokenizer,
#: trace format, training code): old cache folders are then ignored, not reused.
FORMAT_VERSION = 2  # 2: byte-level tokenizer that AutoTokenizer reloads faithfully
#: Written into a built policy's folder: config, loss curve (one loss a step), build time,
#: trace counts, and the sha256 of every other file of the folder.
RECORD_FILE = "warmstart.json"
#: Built policies shipped inside the package, by ``POLICY_CONFIGS`` name (only the default
#: one: the test policy builds in seconds). ``scripts/build_tiny_policy.py --ship`` rebuilds
#: them; ``ensure_policy`` copies one into the cache when its record matches (``shipped_policy``).
SHIPPED_POLICIES: dict[str, Path] = {
    "default": Path(__file__).resolve().parent / "shipped-policies" / "tiny-default"
}
#: Kinds of deliberately imperfect traces (see ``make_trace``).
IMPERFECT_KINDS = ("arith_slip", "wrong_operation")


@dataclass(frozen=True)
class WarmStartConfig:
    """Supervised warm start of a tiny policy on Countdown solver traces.

    The defaults are the real default policy (docs/design.md calibration: hidden 256, 4 layers,
    AdamW, 64 traces a step, lr 2e-3); ``POLICY_CONFIGS["test"]`` is the seconds-long one.
    """

    # --- model ---
    preset: str = "default"
    """Architecture, a key of ``langrl.tiny.model.PRESETS`` (``"default"`` or ``"test"``)."""
    seed: int = 0
    """Seeds the random initialisation, the trace order and the imperfect traces: the same
    config gives the same weights on the same torch build, thread count and kind of machine;
    another kind of CPU changes the last bits, and 500 steps grow them into another policy
    (hence the shipped build)."""

    # --- data ---
    imperfect_fraction: float = 0.1
    """Share of traces with a deliberate mistake, in [0, 1]. Raising it lowers accuracy and
    teaches the error modes RL should learn to avoid; 0 trains on solver traces only."""
    wrong_operation_share: float = 0.5
    """Among imperfect traces, the share of ``wrong_operation`` ones (wrong last step and a
    wrong final answer); the rest are ``arith_slip`` (a wrong result in a step, correct
    answer). In [0, 1]."""

    # --- optimisation ---
    steps: int = 500
    """AdamW steps. Build time grows linearly with it, and so does accuracy: the main
    calibration knob (the default policy's score is in results/README.md)."""
    batch_size: int = 64
    """Traces per step (each about 100-150 tokens)."""
    lr: float = 2e-3
    """Peak learning rate, after ``warmup_steps`` of linear warmup, then cosine decay."""
    min_lr_ratio: float = 0.1
    """The cosine schedule ends at ``lr * min_lr_ratio``; in [0, 1]."""
    warmup_steps: int = 10
    """Linear warmup steps (>= 0, < steps)."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay (>= 0)."""
    grad_clip: float | None = 1.0
    """Clip the gradient's global norm to this (> 0); None disables clipping."""

    # --- runtime (not part of the cache key) ---
    num_threads: int = 2
    """``torch.set_num_threads`` while training (restored afterwards). The machines have
    2 cores; changing it may change the last bits of the weights, not what is learned."""

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        for name in ("seed", "steps", "batch_size", "warmup_steps", "num_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"WarmStartConfig.{name} must be an int, got {value!r}")
        if self.steps < 1 or self.batch_size < 1 or self.num_threads < 1:
            raise ValueError(
                f"steps, batch_size and num_threads must be >= 1, got steps={self.steps}, "
                f"batch_size={self.batch_size}, num_threads={self.num_threads}"
            )
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(
                f"need 0 <= warmup_steps < steps, got warmup_steps={self.warmup_steps}, "
                f"steps={self.steps}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("imperfect_fraction", "wrong_operation_share", "min_lr_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"WarmStartConfig.{name} must be in [0, 1], got {value!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")


#: The cached policies ``ensure_policy`` knows by name.
POLICY_CONFIGS: dict[str, WarmStartConfig] = {
    # The default policy of every agent and script; see docs/design.md for its calibration.
    "default": WarmStartConfig(),
    # For tests that need a model that writes the format: seconds on 2 idle cores. One
    # thread: tests share the 2 cores with other tests, where 2 threads thrash (>10x slower).
    "test": WarmStartConfig(preset="test", steps=120, batch_size=16, lr=3e-3, num_threads=1),
}

# Fields that do not change what is learned, so they do not split the cache.
_RUNTIME_FIELDS = frozenset({"num_threads"})


# --- traces ---

# The solver's step format: "<step>7 * 4 = 28</step>" (operands may be "(-3)" or "(7/2)").
_STEP = re.compile(r"<step>(\S+) ([-+*/]) (\S+) = (\S+)</step>")
_INT = re.compile(r"\d+")


def _apply(x: Fraction, op: str, y: Fraction) -> Fraction | None:
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    return None if y == 0 else x / y


def _operand(text: str) -> Fraction:
    return Fraction(text.strip("()"))


def _arith_slip(actions: list[str], rng: random.Random) -> list[str] | None:
    """A step before the last states a plausible wrong result (``7 * 4 = 32``); the rest
    is unchanged (the last step states the target, which the prompt shows)."""
    steps = [(i, _STEP.fullmatch(a)) for i, a in enumerate(actions[:-2])]
    candidates = [(i, m.groups()) for i, m in steps if m and _INT.fullmatch(m.group(4))]
    if not candidates:
        return None
    k, (x, op, y, result) = rng.choice(candidates)
    r = int(result)
    wrong = {r + d for d in (-10, -2, -1, 1, 2, 10)}
    if op == "*" and _INT.fullmatch(x) and _INT.fullmatch(y):
        # A neighbouring product, the tiny model's typical slip (docs/design.md).
        a, b = int(x), int(y)
        wrong |= {a * (b + 1), a * (b - 1), (a + 1) * b, (a - 1) * b}
    options = sorted(w for w in wrong if w > 0 and w != r)
    slipped = f"<step>{x} {op} {y} = {rng.choice(options)}</step>"
    return [*actions[:k], slipped, *actions[k + 1 :]]


def _last_top_level_operator(expr: str) -> int | None:
    """Index of the last operator outside parentheses: the solver writes each step as
    ``left op right`` with a compound ``right`` parenthesised, so in the final answer this
    is the operator of the last step."""
    depth, found = 0, None
    for i, ch in enumerate(expr):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and ch in "+-*/" and 0 < i < len(expr) - 1 and expr[i - 1] == " ":
            found = i
    return found


def _wrong_operation(
    actions: list[str], task: CountdownTask, rng: random.Random
) -> list[str] | None:
    """The last step uses a wrong operator yet claims the target (``23 - 1 = 24``), and the
    answer mirrors it, so the trace is self-consistent and its answer is wrong."""
    if len(actions) < 2:
        return None
    match = _STEP.fullmatch(actions[-2])
    answer = actions[-1][len("<answer>") : -len("</answer>")]
    pos = _last_top_level_operator(answer)
    if match is None or pos is None or answer[pos] != match.group(2):
        return None
    x, op, y, result = match.groups()
    ops = [o for o in "+-*/" if o != op]
    rng.shuffle(ops)
    for new_op in ops:
        if _apply(_operand(x), new_op, _operand(y)) == _operand(result):
            continue  # e.g. 2 + 2 vs 2 * 2: not a mistake
        new_answer = answer[:pos] + new_op + answer[pos + 1 :]
        if grade_answer(new_answer, task).reason != "wrong_value":
            continue  # only legal, wrong expressions (no division by zero)
        step = f"<step>{x} {new_op} {y} = {result}</step>"
        return [*actions[:-2], step, f"<answer>{new_answer}</answer>"]
    return None


def make_trace(
    task: CountdownTask, rng: random.Random, config: WarmStartConfig
) -> tuple[str, str, str] | None:
    """``(prompt, completion, kind)`` for one task, or None if the solver finds no solution.

    ``prompt`` is the env's plain prompt; ``completion`` the solver's actions concatenated
    (``<step>..</step>...<answer>..</answer>``, no EOS). With probability
    ``config.imperfect_fraction`` the trace carries a deliberate mistake, ``kind``:

    - ``arith_slip``: a step before the last states a wrong result (``7 * 4 = 32``), the
      typical failure of the tiny model (docs/design.md); the answer stays correct.
    - ``wrong_operation``: the last step applies a wrong operator but claims the target
      (``23 - 1 = 24``) and the answer uses that operator: a wrong final expression.

    otherwise (or when the chosen mistake does not apply) ``kind`` is ``"solver"``.
    """
    actions = solution_steps(task.numbers, task.target)
    if actions is None:
        return None
    kind = "solver"
    if rng.random() < config.imperfect_fraction:
        if rng.random() < config.wrong_operation_share:
            changed, wanted = _wrong_operation(actions, task, rng), "wrong_operation"
        else:
            changed, wanted = _arith_slip(actions, rng), "arith_slip"
        if changed is not None:
            actions, kind = changed, wanted
    return format_prompt(task), "".join(actions), kind


def iter_traces(config: WarmStartConfig) -> Iterator[tuple[str, str, str]]:
    """Endless, deterministic stream of ``make_trace`` results over the TRAIN split,
    reshuffled each epoch with ``random.Random(config.seed)``."""
    tasks = load_countdown("train")
    rng = random.Random(config.seed)
    order = list(range(len(tasks)))
    while True:
        rng.shuffle(order)
        for i in order:
            trace = make_trace(tasks[i], rng, config)
            if trace is not None:
                yield trace


# --- training ---


def _encode(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str
) -> tuple[list[int], int]:
    """Ids of prompt + completion + EOS, and the prompt length (no loss on the prompt)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return [*prompt_ids, *completion_ids, tokenizer.eos_token_id], len(prompt_ids)


def _collate(
    batch: list[tuple[list[int], int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(ids, attention_mask, labels)``; labels are -100 on prompt and pad."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros_like(ids)  # (B, T)
    labels = torch.full_like(ids, -100)  # (B, T)
    for row, (seq, prompt_len) in enumerate(batch):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, prompt_len : len(seq)] = ids[row, prompt_len : len(seq)]
    return ids, mask, labels


def trace_batches(
    config: WarmStartConfig, tokenizer: PreTrainedTokenizerBase
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]]:
    """The warm start's batches, one a step: right-padded ``(ids, attention_mask, labels)``
    of ``config.batch_size`` traces of ``iter_traces(config)``, and the traces' kinds."""
    traces = iter_traces(config)
    while True:
        batch, kinds = [], []
        for _ in range(config.batch_size):
            prompt, completion, kind = next(traces)
            kinds.append(kind)
            batch.append(_encode(tokenizer, prompt, completion))
        yield (*_collate(batch, tokenizer.pad_token_id), kinds)


def _lr_at(step: int, config: WarmStartConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr * min_lr_ratio``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.lr * (config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine)


def warm_start(
    model: PolicyValueModel,
    tokenizer: PreTrainedTokenizerBase,
    config: WarmStartConfig,
    *,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict:
    """Train ``model.lm`` in place on ``config.steps`` batches of traces; the value head is
    not touched. Loss: mean cross-entropy over completion tokens (EOS included).
    ``stop_after`` runs only the first that many steps of the same run (same batches and
    learning-rate schedule): how a test replays the start of a recorded build.

    Returns statistics: ``losses`` (one per step) and ``kinds`` (trace counts per kind).
    """
    torch.manual_seed(config.seed)
    lm = model.lm
    lm.train()
    decay = [p for n, p in lm.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in lm.named_parameters() if p.ndim < 2]  # norms: no decay
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    batches = trace_batches(config, tokenizer)
    kinds: Counter[str] = Counter()
    losses: list[float] = []
    steps = config.steps if stop_after is None else min(stop_after, config.steps)
    bar = tqdm(range(steps), desc=f"warm start ({config.preset})", disable=not progress)
    for step in bar:
        # --- batch ---
        ids, mask, labels, batch_kinds = next(batches)
        kinds.update(batch_kinds)

        # --- update ---
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        logits = lm(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)),  # (B*(T-1), V)
            labels[:, 1:].reshape(-1),  # (B*(T-1),)
            ignore_index=-100,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(lm.parameters(), config.grad_clip)
        optimizer.step()

        # --- logging ---
        losses.append(loss.item())  # sync point (cheap on CPU)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    lm.eval()
    return {"losses": losses, "kinds": dict(kinds)}


def build_policy(
    path: str | os.PathLike, config: WarmStartConfig | None = None, *, progress: bool = True
) -> Path:
    """Write a warm-started tiny policy to ``path`` and return it.

    ``build_random_policy`` (tokenizer, random Qwen2, value head), then ``warm_start``,
    then ``PolicyValueModel.save_pretrained``; the value head stays as initialised (last
    layer zero, so V = 0 everywhere). ``RECORD_FILE`` records config and loss curve.
    """
    config = config or WarmStartConfig()
    path = Path(path)
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        build_random_policy(path, config.preset, seed=config.seed)
        model = PolicyValueModel.from_pretrained(path)
        stats = warm_start(model, build_tokenizer(), config, progress=progress)
        model.save_pretrained(path)
    finally:
        torch.set_num_threads(previous_threads)
    record = {
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(config),
        "config_hash": config_hash(config),
        "build_seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        **stats,
        "sha256": file_hashes(path),
    }
    (path / RECORD_FILE).write_text(json.dumps(record, indent=1))
    return path


def file_hashes(path: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file of a policy folder but its record, by relative POSIX path."""
    path = Path(path)
    return {
        item.relative_to(path).as_posix(): hashlib.sha256(item.read_bytes()).hexdigest()
        for item in sorted(path.rglob("*"))
        if item.is_file() and item.relative_to(path).as_posix() != RECORD_FILE
    }


# --- cache ---


def langrl_home() -> Path:
    """``$LANGRL_HOME``, default ``~/.cache/langrl``: where built policies are cached."""
    return Path(os.environ.get("LANGRL_HOME") or "~/.cache/langrl").expanduser()


def config_hash(config: WarmStartConfig) -> str:
    """Short stable hash of what a config learns (runtime fields left out) and the format
    version: the cache key."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in _RUNTIME_FIELDS}
    blob = json.dumps({"format_version": FORMAT_VERSION, **fields}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _resolve(preset: str, config: WarmStartConfig | None) -> WarmStartConfig:
    if config is not None:
        return config
    if preset not in POLICY_CONFIGS:
        raise ValueError(f"unknown policy {preset!r}; choose from {sorted(POLICY_CONFIGS)}")
    return POLICY_CONFIGS[preset]


def default_policy_path(preset: str = "default", config: WarmStartConfig | None = None) -> Path:
    """Where ``ensure_policy(preset, config)`` keeps its policy (it may not be built yet):
    ``$LANGRL_HOME/policies/tiny-{preset}-v{FORMAT_VERSION}-{config_hash}``."""
    config = _resolve(preset, config)
    name = f"tiny-{config.preset}-v{FORMAT_VERSION}-{config_hash(config)}"
    return langrl_home() / "policies" / name


@contextlib.contextmanager
def _file_lock(lock_path: Path) -> Iterator[bool]:
    """Exclusive advisory lock (``fcntl.flock``) so concurrent processes build once; yields
    whether it is held. Where ``fcntl`` is missing, the atomic rename in ``ensure_policy``
    still keeps the cache consistent (a lost race only costs a duplicate build)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield False
        return
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _make_shareable(path: Path) -> None:
    """``mkdtemp`` folders (and safetensors files) are private (0o700 / 0o600); make the
    cached policy readable like any installed model (0o755 / 0o644)."""
    for item in (path, *path.rglob("*")):
        os.chmod(item, 0o755 if item.is_dir() else 0o644)


def _is_complete(path: Path) -> bool:
    return (path / RECORD_FILE).is_file()


def shipped_policy(config: WarmStartConfig) -> Path | None:
    """The shipped build of ``config`` (a folder of ``SHIPPED_POLICIES``), or None.

    A shipped build counts when its record has the current ``FORMAT_VERSION`` and
    ``config_hash(config)`` and each file it lists has its recorded sha256 (a checkout that
    holds Git LFS pointers or a truncated file then warns and builds instead).
    """
    wanted = config_hash(config)
    for folder in SHIPPED_POLICIES.values():
        if not _is_complete(folder):
            continue
        record = json.loads((folder / RECORD_FILE).read_text())
        if record.get("format_version") != FORMAT_VERSION or record.get("config_hash") != wanted:
            continue
        recorded = record.get("sha256") or {}
        actual = {name: _sha256(folder / name) for name in recorded}
        if not recorded or actual != recorded:
            bad = sorted(name for name in recorded if actual[name] != recorded[name])
            warnings.warn(
                f"the shipped policy {folder} does not match its record (files {bad}); "
                "building it instead",
                stacklevel=2,
            )
            continue
        return folder
    return None


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _copy_policy(source: Path, target: Path) -> None:
    """Copy the files ``source``'s record lists, and the record, into the folder ``target``."""
    record = json.loads((source / RECORD_FILE).read_text())
    for name in [*record["sha256"], RECORD_FILE]:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target / name)


def ensure_policy(
    preset: str = "default", config: WarmStartConfig | None = None, *, progress: bool = True
) -> Path:
    """Path of the cached warm-started policy ``preset`` (or of ``config``), built on first
    use and reused afterwards.

    ``"default"`` is copied from the shipped build (``shipped_policy``) when it matches
    the config, else built (10-20 minutes on 2 CPU cores); ``"test"`` builds in seconds.
    A build (or copy) runs in a temporary folder beside the target and is renamed into
    place only when complete, under a file lock, so concurrent callers neither build twice
    nor ever see a half-written policy. Delete the folder to force a rebuild (or a copy).
    """
    target = default_policy_path(preset, config)
    if _is_complete(target):
        return target
    config = _resolve(preset, config)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock") as exclusive:
        if _is_complete(target):  # built by another process while we waited
            return target
        if exclusive:  # nobody else builds it now: temp folders left are from killed builds
            for stale in target.parent.glob(f".{target.name}.*"):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            shipped = shipped_policy(config)
            if shipped is not None:
                logger.info("copying the shipped policy %s to %s", shipped, target)
                _copy_policy(shipped, tmp)
            else:
                build_policy(tmp, config, progress=progress)
            _make_shareable(tmp)
            if target.exists():  # an incomplete leftover (not ours): replace it
                shutil.rmtree(target)
            try:
                os.rename(tmp, target)
            except OSError:
                if not _is_complete(target):  # lost a lock-free race only if it is complete
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
