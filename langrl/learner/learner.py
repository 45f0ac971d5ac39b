"""The torch learner every agent shares: one optimiser step per batch of ``Trajectory``.

The learner is agent-agnostic (``docs/design.md``: MCTS-distill, CISPO and best-of-N all emit the
same ``Trajectory``). Per step it computes

    total = c_policy * policy + c_value * value + c_kl * kl

where ``policy`` is CISPO (MiniMax-M1) against the engine's behaviour logprobs,
``value`` is ``MSE(V(s_t), reward)`` at every completion token, and ``kl`` is the k3 estimate
of ``KL(pi || pi_ref)`` against the frozen initial policy, all from ``losses``. Missing
advantages are ``A_t = reward - sg(V_old(s_t))`` (tree-search-distillation paper; no GAE).

The value head has its own AdamW parameter group (``value_lr``; no lr warm-up), and the first
``value_warmup_steps`` steps train it alone on frozen LM features, so the baseline is fitted
before the policy moves. At a policy lr (1e-5) one shared lr left a zero-initialised V near 0
for a whole run, which made ``A_t`` the raw reward: REINFORCE without a baseline.

Alignment (one convention, used for logprobs, values and masks): a sequence is
``prompt + completion`` (length ``P + C``). Completion token ``i`` sits at position ``P + i``;
its logprob comes from the logits at position ``P + i - 1``, and its state value
``V(s_t)`` (state = the prefix before token ``i``) is the value head at that same position.
All per-token tensors therefore live on the "shifted" grid of positions ``0 .. T-2``.

Temperature: each trajectory's logits are divided by its own ``Trajectory.temperature`` (the
one its behaviour logprobs were sampled at) for the policy ratio, the KL and the entropy.

Checkpoints are plain resumable records (nanoGPT): a ``from_pretrained``-loadable model
directory plus optimizer state, step, config and caller-supplied ``extra``, written
atomically (temp dir, fsync, rename; then an atomically replaced ``latest`` pointer), with a
``manifest.json`` of every file's size and sha256 that ``load_checkpoint`` and
``latest_checkpoint`` verify (a truncated or corrupt checkpoint is refused in one line
naming the file, and ``latest_checkpoint`` falls back to the previous one). A failed save
(a full disk) raises one ``CheckpointError`` line and leaves the previous checkpoint and
``latest`` as they were; ``keep_last`` prunes older checkpoints after a successful save.

Example::

    learner = Learner("runs/tiny_policy", LearnerConfig(lr=1e-4))
    metrics = learner.step(trajectories, current_version=engine.policy_version)
    engine.load_weights(*learner.export_weights())
    learner.save_checkpoint("runs/x/checkpoints", extra={"data_position": 1234})
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import uuid
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from langrl.checks import check_int
from langrl.learner import data_parallel
from langrl.learner.config import LearnerConfig
from langrl.learner.losses import POLICY_LOSSES, k3_kl, masked_mean, value_loss
from langrl.policy_model import (
    PolicyValueModel,
    check_plain_lm_head,
    final_hidden_states,
    token_logprobs,
)
from langrl.stats import pearson
from langrl.trajectory import Trajectory

logger = logging.getLogger(__name__)

#: Every tag ``Learner.step`` may return (TensorBoard ``group/name``).
METRIC_TAGS: tuple[str, ...] = (
    "loss/policy",
    "loss/value",
    "loss/kl",
    "loss/total",
    "train/clip_frac",
    "train/entropy",
    "train/kl",
    "train/grad_norm",
    "train/lr",
    "train/ratio_mean",
    "train/advantage_mean",
    "train/value_mean",
    "train/value_reward_corr",
    "train/reward_mean_batch",
    "train/value_only_trajectories",
    "train/staleness_mean",
    "train/skipped_steps",
    "perf/learner_tokens_per_s",
)

#: ``LearnerConfig.dtype`` -> compute dtype (weights and optimizer state stay float32).
TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}

#: Names of the optimiser's parameter groups (``param_groups[i]["name"]``), in order: the LM
#: (trunk and output layer), then the value head (its own lr, ``LearnerConfig.value_lr``).
POLICY_GROUP = "policy"
VALUE_GROUP = "value_head"

CHECKPOINT_PREFIX = "step_"
LATEST_FILE = "latest"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "learner_state.json"  # its presence marks a complete checkpoint
MANIFEST_FILE = "manifest.json"  # written last: size and sha256 of every other file
#: ``learner_state.json``'s ``format_version``: 2 = the checkpoint has a manifest (1: none,
#: written before manifests; checked by its safetensors headers and archive structure).
CHECKPOINT_FORMAT = 2
#: Files are hashed in blocks of this many bytes (one sha256 per block, in parallel), so
#: that verifying a multi-GB optimizer file takes seconds rather than a core-minute.
HASH_BLOCK_BYTES = 64 << 20
_TMP_PREFIX = ".tmp-"
# A local model directory holding none of these has no tokenizer (AutoTokenizer would
# still build an empty one from config.json, so their presence is checked first).
_TOKENIZER_MARKERS = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)


# --- batching -----------------------------------------------------------------------------------


@dataclass
class _MicroBatch:
    """Right-padded tensors of a few trajectories; per-token fields on the shifted grid."""

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long
    targets: torch.Tensor  # (B, T-1) long: token j+1, predicted at position j
    completion_mask: torch.Tensor  # (B, T-1) bool: position predicts a completion token
    # Each row's sampling temperature: one number when all rows share it (the division is
    # then by a scalar, exactly as with one temperature per run), else (B,) float32.
    temperature: float | torch.Tensor
    old_logprobs: torch.Tensor  # (B, T-1) float: behaviour logprobs (0 elsewhere)
    advantages: torch.Tensor  # (B, T-1) float: given advantages (0 elsewhere)
    has_advantages: torch.Tensor  # (B, T-1) bool: True where the agent supplied A_t
    returns: torch.Tensor  # (B, T-1) float: the episode reward at completion positions
    num_tokens: int  # real (non-pad) tokens, for throughput
    value_only: bool = False  # every row is Trajectory.value_only (they are never mixed)

    def to(self, device: torch.device) -> _MicroBatch:
        moved = {
            name: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for name, value in vars(self).items()
        }
        return _MicroBatch(**moved)


def _collate(trajectories: Sequence[Trajectory], pad_id: int) -> _MicroBatch:
    """Right-pad ``prompt + completion`` and lay per-token fields onto the shifted grid."""
    batch, width = len(trajectories), max(t.num_tokens for t in trajectories)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)  # (B, T)
    grid = (batch, width - 1)
    completion_mask = torch.zeros(grid, dtype=torch.bool)  # (B, T-1)
    old_logprobs = torch.zeros(grid, dtype=torch.float32)  # (B, T-1)
    advantages = torch.zeros(grid, dtype=torch.float32)  # (B, T-1)
    has_advantages = torch.zeros(grid, dtype=torch.bool)  # (B, T-1)
    returns = torch.zeros(grid, dtype=torch.float32)  # (B, T-1)
    for row, traj in enumerate(trajectories):
        p, c = len(traj.prompt_ids), len(traj.completion_ids)
        input_ids[row, : p + c] = torch.tensor(traj.prompt_ids + traj.completion_ids)
        attention_mask[row, : p + c] = 1
        # Completion token i is at position p + i and predicted from position p + i - 1.
        span = slice(p - 1, p + c - 1)
        completion_mask[row, span] = True
        old_logprobs[row, span] = torch.tensor(traj.behaviour_logprobs, dtype=torch.float32)
        if traj.advantages is not None:
            advantages[row, span] = torch.tensor(traj.advantages, dtype=torch.float32)
            has_advantages[row, span] = True
        returns[row, span] = float(traj.reward)
    temperatures = {float(t.temperature) for t in trajectories}
    temperature = (
        temperatures.pop()
        if len(temperatures) == 1
        else torch.tensor([float(t.temperature) for t in trajectories], dtype=torch.float32)
    )  # a number, or (B,)
    return _MicroBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        targets=input_ids[:, 1:],
        completion_mask=completion_mask,
        temperature=temperature,
        old_logprobs=old_logprobs,
        advantages=advantages,
        has_advantages=has_advantages,
        returns=returns,
        num_tokens=sum(t.num_tokens for t in trajectories),
        value_only=all(t.value_only for t in trajectories),
    )


def _non_finite_reason(batch: Sequence[Trajectory]) -> str | None:
    """Why the batch cannot be trained on (a NaN/inf number), or None if it is clean."""
    for i, traj in enumerate(batch):
        if not math.isfinite(traj.reward):
            return f"trajectory {i} has non-finite reward {traj.reward}"
        fields = (("behaviour_logprobs", traj.behaviour_logprobs), ("advantages", traj.advantages))
        for name, values in fields:
            if values is None:
                continue
            for j, value in enumerate(values):
                if not math.isfinite(value):
                    return f"trajectory {i} has non-finite {name}[{j}] = {value}"
    return None


def _embeddings_tied(lm: PreTrainedModel) -> bool:
    """True if the output projection shares storage with the input embedding."""
    out = lm.get_output_embeddings()
    return out is not None and out.weight is lm.get_input_embeddings().weight


def _on_grid(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place ``values`` (N,) at the True entries of ``mask`` (B, T-1), in row-major order,
    with 0 elsewhere (a finite placeholder the masked losses select away)."""
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(
        mask, values
    )  # (B, T-1)


def load_checkpoint_tokenizer(model_path: str | os.PathLike) -> PreTrainedTokenizerBase | None:
    """The tokenizer a checkpoint of the model at ``model_path`` must carry, or None.

    ``model_path`` is a local directory or a hub id. Checkpoints save this tokenizer with
    ``save_pretrained`` rather than copying files by name, so that they stand alone
    (``evaluate.py --model <checkpoint>`` and vLLM run offline) whatever the source: a hub id
    (files in the hub cache), or a directory whose tokenizer or chat template sits in files
    of other names (``chat_template.json``, ``vocab.txt``, ...). A local directory with no
    tokenizer file at all gives None (a warning says checkpoints will hold none).
    """
    local = Path(model_path)
    if local.is_dir() and not any((local / name).is_file() for name in _TOKENIZER_MARKERS):
        logger.warning("%s holds no tokenizer: checkpoints will not include one", local)
        return None
    return AutoTokenizer.from_pretrained(str(model_path))


# --- checkpoint files ---------------------------------------------------------------------------


def _fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every directory (so renames see durable data)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    # Directory fsync persists renames/creations inside it; unsupported on some platforms.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _is_complete(path: Path) -> bool:
    return path.is_dir() and (path / STATE_FILE).is_file()


class CheckpointError(OSError):
    """A checkpoint that could not be written, or that is not intact, in one line naming the
    file (``.../step_00000008/model.safetensors: truncated (12345 of 13139120 bytes)``) or
    the save (``saving step 12 to runs/x/checkpoints failed: No space left on device``).
    An ``OSError``, so code that handles failed I/O handles it too."""


#: What a failed write raises, besides ``OSError``: ``torch.save`` (``RuntimeError``, the
#: ``OSError`` as its context) and safetensors (``SafetensorError``, the errno in its text).
_WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


def _write_failure(err: BaseException) -> str:
    """The cause of a failed write in a few words (``No space left on device``)."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        match = re.search(r"os error (\d+)", str(cause))
        if match:
            return os.strerror(int(match.group(1)))
        cause = cause.__cause__ or cause.__context__
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _block_digests(path: Path, names: Sequence[str], block: int) -> dict[str, list[str]]:
    """sha256 of each ``block``-byte block of each file ``path / name``, hashed in parallel
    (hashlib releases the GIL)."""
    jobs = [
        (name, start)
        for name in names
        for start in range(0, max((path / name).stat().st_size, 1), block)
    ]

    def digest(job: tuple[str, int]) -> str:
        name, start = job
        with open(path / name, "rb") as f:
            f.seek(start)
            return hashlib.sha256(f.read(block)).hexdigest()

    workers = max(1, min(len(jobs), os.cpu_count() or 1, 16))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(digest, jobs))
    out: dict[str, list[str]] = {name: [] for name in names}
    for (name, _), value in zip(jobs, digests, strict=True):
        out[name].append(value)
    return out


def _write_manifest(path: Path) -> None:
    """Record the size and block sha256s of every file under ``path`` in ``manifest.json``."""
    names = sorted(
        p.relative_to(path).as_posix()
        for p in path.rglob("*")
        if p.is_file() and p != path / MANIFEST_FILE
    )
    digests = _block_digests(path, names, HASH_BLOCK_BYTES)
    files = {
        name: {"size": (path / name).stat().st_size, "sha256": digests[name]} for name in names
    }
    manifest = {"format_version": 1, "block_bytes": HASH_BLOCK_BYTES, "files": files}
    (path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))


def _check_size(file: Path, size: int, expected: int) -> None:
    if size < expected:
        raise CheckpointError(f"{file}: truncated ({size} of {expected} bytes)")
    if size > expected:
        raise CheckpointError(f"{file}: {size} bytes, expected {expected}")


def _check_manifest(path: Path) -> None:
    manifest_file = path / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_file.read_text())
        files = {name: (int(r["size"]), list(r["sha256"])) for name, r in manifest["files"].items()}
        block = int(manifest["block_bytes"])
        if block < 1:
            raise ValueError(block)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{manifest_file}: unreadable ({type(err).__name__})") from None
    for name, (size, _) in files.items():  # sizes first: a truncation costs no hashing
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        _check_size(file, file.stat().st_size, size)
    digests = _block_digests(path, list(files), block)
    for name, (_, expected) in files.items():
        if digests[name] != expected:
            raise CheckpointError(f"{path / name}: corrupt (sha256 differs from {MANIFEST_FILE})")


def _check_safetensors(file: Path) -> None:
    """The header parses and the file is as long as the header's tensors say."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            head = f.read(8)
            length = int.from_bytes(head, "little")
            if len(head) < 8 or 8 + length > size:
                raise CheckpointError(
                    f"{file}: truncated ({size} bytes, its header alone needs {8 + length})"
                )
            header = json.loads(f.read(length))
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        raise CheckpointError(f"{file}: corrupt (unreadable safetensors header)") from None
    _check_size(file, size, 8 + length + end)


def _check_legacy(path: Path, state: Mapping[str, Any]) -> None:
    """A checkpoint written before manifests: the completeness marker, as then, plus the
    headers and archive structure of the files it holds (a truncation is caught, a flipped
    bit inside tensor data is not; a missing file fails when loading, naming it)."""
    if int(state.get("format_version", 1)) >= 2:
        raise CheckpointError(f"{path / MANIFEST_FILE}: missing")
    for file in sorted(path.rglob("*.safetensors")):
        _check_safetensors(file)
    optimizer = path / OPTIMIZER_FILE
    if optimizer.is_file() and not zipfile.is_zipfile(optimizer):
        raise CheckpointError(f"{optimizer}: truncated or corrupt (not a complete torch archive)")


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Raise ``CheckpointError`` (one line naming the file) unless the checkpoint directory
    ``path`` is complete and intact: every file the manifest lists, of its size and sha256.
    A checkpoint from before manifests is checked by its safetensors headers and the
    optimizer archive's structure. Reads every byte (parallel; about 1 GB/s per core)."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not _is_complete(path):
        raise CheckpointError(f"{state_file}: missing (not a complete checkpoint)")
    if (path / MANIFEST_FILE).is_file():
        _check_manifest(path)
        return
    try:
        state = json.loads(state_file.read_text())
        if not isinstance(state, dict):
            raise TypeError
    except (OSError, ValueError, TypeError):
        raise CheckpointError(f"{state_file}: unreadable") from None
    _check_legacy(path, state)


def latest_checkpoint(root: str | os.PathLike, *, verify: bool = True) -> Path | None:
    """The newest complete, intact checkpoint directory under ``root``, or None if there is none.

    Follows the ``latest`` pointer; if it is missing, names an incomplete directory (a run
    killed at an unlucky moment) or one that fails ``verify_checkpoint`` (truncated,
    corrupt), falls back to the highest-numbered complete ``step_*`` that passes, and logs
    one warning naming what it skipped and why. ``verify=False`` only checks that the
    directories are complete (no file is read: cheap, for listing runs).
    """
    root = Path(root)
    pointer = root / LATEST_FILE
    candidates: list[Path] = []
    if pointer.is_file():
        with contextlib.suppress(OSError, UnicodeDecodeError):
            name = pointer.read_text().strip()
            if name:
                candidates.append(root / name)
    if root.is_dir():
        steps = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if _is_complete(p)]
        candidates += sorted(steps, key=lambda p: p.name, reverse=True)
    skipped: list[str] = []
    found = None
    for candidate in dict.fromkeys(candidates):  # in order, without repeats
        if not _is_complete(candidate):
            skipped.append(f"{candidate} (named by {pointer}): incomplete")
            continue
        if verify:
            try:
                verify_checkpoint(candidate)
            except CheckpointError as err:
                skipped.append(str(err))
                continue
        found = candidate
        break
    if skipped and (found is not None or verify):
        logger.warning(
            "skipped checkpoint%s %s; %s",
            "s" if len(skipped) > 1 else "",
            "; ".join(skipped),
            f"using {found}" if found is not None else f"no intact checkpoint under {root}",
        )
    return found


def prune_checkpoints(
    root: str | os.PathLike, keep_last: int, keep: Iterable[str | os.PathLike] = ()
) -> list[Path]:
    """Remove all but the newest ``keep_last`` complete ``step_*`` checkpoints under ``root``
    (by step), never the one ``latest`` names nor those in ``keep``; return the removed.
    Each is first renamed to a temp name, so a kill mid-way leaves no half-deleted
    checkpoint behind (the next save removes the leftover)."""
    check_int("prune_checkpoints", "keep_last", keep_last, 1)
    root = Path(root)
    kept = {Path(p).name for p in keep}
    with contextlib.suppress(OSError, UnicodeDecodeError):
        kept.add((root / LATEST_FILE).read_text().strip())
    steps = sorted(
        (p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if _is_complete(p)),
        key=lambda p: p.name,
        reverse=True,
    )
    removed = []
    for old in steps[keep_last:]:
        if old.name in kept:
            continue
        doomed = root / f"{_TMP_PREFIX}prune-{old.name}-{uuid.uuid4().hex[:8]}"
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(old)
    if removed:
        _fsync_dir(root)
    return removed


def _remove_stale_temps(root: Path) -> None:
    """Remove what crashed saves left: temp checkpoint dirs and ``latest`` pointer files."""
    for stale in root.glob(f"{_TMP_PREFIX}*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                stale.unlink()


def _write_pointer(root: Path, name: str) -> None:
    """Atomically point ``root/latest`` at ``name`` (temp file, fsync, rename)."""
    pointer_tmp = root / f"{_TMP_PREFIX}{LATEST_FILE}-{uuid.uuid4().hex[:8]}"
    try:
        with open(pointer_tmp, "w") as f:
            f.write(name)
            f.flush()
            os.fsync(f.fileno())
        os.replace(pointer_tmp, root / LATEST_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            pointer_tmp.unlink()
        raise
    _fsync_dir(root)


# --- learner ------------------------------------------------------------------------------------


class Learner:
    """Owns the trainable ``PolicyValueModel``, its frozen reference and the AdamW optimiser.

    Args:
        model_path: Directory or hub id of the INITIAL policy
            (``PolicyValueModel.from_pretrained``); its tokenizer goes into every checkpoint.
            It is also the KL reference, so resume with ``load_checkpoint`` rather than by
            passing a checkpoint here (that would move the reference).
        config: Hyperparameters; defaults are the paper's.

    Not thread-safe: call ``step``, ``export_weights`` and the checkpoint methods from one
    thread (or hold a lock), since ``step`` updates the parameters in place.

    Attributes:
        global_step: Optimiser steps taken (skipped steps do not count).
        skipped_steps: Steps skipped because of NaN/inf input, loss or gradient.
        current_version: Engine weight version used for ``train/staleness_mean`` when
            ``step`` gets no ``current_version`` argument; ``None`` = do not report staleness.
        tokenizer: ``model_path``'s tokenizer, saved into checkpoints
            (``load_checkpoint_tokenizer``); None when a local directory has none.
    """

    def __init__(self, model_path: str | os.PathLike, config: LearnerConfig | None = None) -> None:
        self.config = config if config is not None else LearnerConfig()
        self.model_path = Path(model_path)
        self.device = torch.device(self.config.device)
        # The seed only matters for a value head the path does not provide; fork so that
        # building a learner leaves the caller's global RNG alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            # Master weights stay float32 whatever the compute dtype (see config.dtype).
            self.model = PolicyValueModel.from_pretrained(
                self.model_path, dtype=torch.float32, device=str(self.device)
            )
        # Dropout off: the learner's logprobs must be the engine's function of the weights,
        # and V_old = the current forward's values (no second no-grad pass needed).
        self.model.eval()
        self.ref_model: PreTrainedModel | None = None
        if self.config.c_kl > 0:
            # Same dtype and autocast as the policy, so the KL is exactly 0 at step 0.
            ref = AutoModelForCausalLM.from_pretrained(str(self.model_path), dtype=torch.float32)
            check_plain_lm_head(ref)
            self.ref_model = ref.to(self.device).eval().requires_grad_(False)
        # Two groups so the value head can learn at its own rate (a policy lr leaves a fresh
        # head near its initial value for hundreds of steps). Parameter order = the order of
        # model.parameters(), so a one-group optimizer state maps onto these by index.
        lrs = self._lrs_at(0)
        self.optimizer = torch.optim.AdamW(
            [
                {
                    "name": name,
                    "params": [p for p in module.parameters() if p.requires_grad],
                    "lr": lrs[name],
                }
                for name, module in (
                    (POLICY_GROUP, self.model.lm),
                    (VALUE_GROUP, self.model.value_head),
                )
            ],
            lr=lrs[POLICY_GROUP],
            betas=(self.config.adam_beta1, self.config.adam_beta2),
            eps=self.config.adam_eps,
            weight_decay=self.config.weight_decay,
        )
        self._policy_loss_fn = POLICY_LOSSES[self.config.policy_loss]
        self._policy_loss_kwargs = self.config.policy_loss_kwargs()
        self._pad_id = self.model.lm.config.pad_token_id or 0
        self._vocab_size = self.model.lm.get_input_embeddings().weight.shape[0]
        self.global_step = 0
        self.skipped_steps = 0
        self.current_version: int | None = None
        # Loaded now, not at the first save: a missing tokenizer fails before training.
        self.tokenizer = load_checkpoint_tokenizer(model_path)

    # --- update -----------------------------------------------------------------------------

    def step(
        self, batch: Sequence[Trajectory], current_version: int | None = None
    ) -> dict[str, float]:
        """One optimiser step over ``batch`` (gradient-accumulated over micro-batches).

        Returns metrics under the tags in ``METRIC_TAGS``. A batch holding NaN/inf (reward,
        behaviour logprobs, advantages), or a non-finite loss or gradient norm, skips the
        step: weights and optimizer state stay untouched, a warning says why, and only
        ``train/skipped_steps`` (running count) and ``train/lr`` are returned.
        ``current_version`` (else ``self.current_version``) enables ``train/staleness_mean``.
        """
        self._check_structure(batch)
        start = time.perf_counter()
        reason = _non_finite_reason(batch)
        if reason is not None:
            return self._skip(reason)

        # --- collate: sort by length so micro-batches carry little padding ---
        # Value-only trajectories get micro-batches of their own (no policy term at all);
        # with c_value 0 there is nothing to learn from them.
        cfg = self.config
        by_length = sorted(range(len(batch)), key=lambda i: batch[i].num_tokens)
        policy_order = [i for i in by_length if not batch[i].value_only]
        value_order = [i for i in by_length if batch[i].value_only and cfg.c_value > 0]
        order = policy_order + value_order
        size = cfg.micro_batch_size
        micro = [
            _collate([batch[i] for i in rows[k : k + size]], self._pad_id)
            for rows in (policy_order, value_order)
            for k in range(0, len(rows), size)
        ]

        # Whole-batch counts (CPU, no sync): the normalisers that make accumulation exact.
        # The policy and KL terms average over the policy trajectories; the value term over
        # every trajectory, value-only ones included.
        def count(mbs: list[_MicroBatch]) -> int:
            if cfg.loss_normalization == "token":
                return sum(int(mb.completion_mask.sum()) for mb in mbs)
            return sum(int(mb.completion_mask.any(-1).sum()) for mb in mbs)

        policy_micro = [mb for mb in micro if not mb.value_only]
        n_tokens = sum(int(mb.completion_mask.sum()) for mb in policy_micro)
        n_value_tokens = sum(int(mb.completion_mask.sum()) for mb in micro)
        normalizer = max(count(policy_micro), 1)
        value_normalizer = max(count(micro), 1)

        # --- forward / backward per micro-batch (data parallel: this rank's share) ---
        value_only = self.global_step < cfg.value_warmup  # value warm-up: head only
        ranks = data_parallel.current()  # None: one process, as always
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        row_values: list[torch.Tensor] = []  # per trajectory, in `order`
        for index, mb in enumerate(micro):
            if ranks is not None and not ranks.owns(index):
                # Another rank trains it; zeros here, its values arrive by the all-reduce.
                row_values.append(torch.zeros(mb.input_ids.shape[0], device=self.device))
                continue
            parts, mb_row_values = self._forward_backward(
                mb.to(self.device), normalizer, value_only, value_normalizer
            )
            for name, value in parts.items():
                sums[name] = sums[name] + value if name in sums else value
            row_values.append(mb_row_values)

        # --- optimiser step, unless anything is non-finite ---
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if ranks is not None:
            # Each micro-batch's loss is divided by whole-batch counts, so the sum over ranks
            # IS the one-process gradient; every rank then clips and steps identically.
            sums, rows = data_parallel.all_reduce_step(
                params, sums, self._part_names(), torch.cat(row_values)
            )
            row_values = [rows]
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)  # measured even if inf
        finite = torch.isfinite(sums["loss/total"]) & torch.isfinite(grad_norm)
        if not bool(finite):  # sync point: one per step
            self.optimizer.zero_grad(set_to_none=True)
            return self._skip(
                f"non-finite loss {float(sums['loss/total'])} or gradient norm {float(grad_norm)}"
            )
        lrs = self._set_lrs(self.global_step)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1

        # --- metrics: one device->host transfer for all of them ---
        names = [*sorted(sums), "grad_norm"]
        scalars = torch.stack([sums[k].float() for k in sorted(sums)] + [grad_norm.float()])
        flat = torch.cat([scalars, *row_values]).tolist()  # sync
        values = dict(zip(names, flat[: len(names)], strict=True))
        rewards = [float(batch[i].reward) for i in order]  # row_values' order
        policy_rewards = [float(batch[i].reward) for i in policy_order]
        per_token = 1.0 / max(n_tokens, 1)
        metrics = {
            "loss/policy": values["loss/policy"],
            "loss/value": values["loss/value"],
            "loss/kl": values["loss/kl"],
            "loss/total": values["loss/total"],
            "train/clip_frac": values["sum/clip_frac"] * per_token,
            "train/ratio_mean": values["sum/ratio_mean"] * per_token,
            "train/entropy": values["sum/entropy"] * per_token,
            "train/advantage_mean": values["sum/advantage"] * per_token,
            "train/value_mean": values["sum/value"] / max(n_value_tokens, 1),
            "train/reward_mean_batch": sum(policy_rewards) / max(len(policy_rewards), 1),
            "train/value_only_trajectories": float(len(value_order)),
            "train/grad_norm": values["grad_norm"],
            "train/lr": lrs[POLICY_GROUP],
            "train/skipped_steps": float(self.skipped_steps),
        }
        # min_std: a zero-initialised head's per-row means differ only by float rounding.
        corr = pearson(flat[len(names) :], rewards, min_std=1e-6)
        if corr is not None:
            metrics["train/value_reward_corr"] = corr
        if self.ref_model is not None:
            metrics["train/kl"] = values["sum/kl"] * per_token
        version = current_version if current_version is not None else self.current_version
        if version is not None:
            staleness = [version - batch[i].policy_version for i in order]
            metrics["train/staleness_mean"] = sum(staleness) / len(staleness)
        elapsed = time.perf_counter() - start
        metrics["perf/learner_tokens_per_s"] = sum(mb.num_tokens for mb in micro) / elapsed
        return metrics

    def _part_names(self) -> list[str]:
        """Every metric part ``_forward_backward`` returns (the same for every micro-batch),
        so a rank that trained none still reduces the same entries."""
        names = [
            "loss/policy",
            "loss/value",
            "loss/kl",
            "loss/total",
            "sum/clip_frac",
            "sum/ratio_mean",
            "sum/entropy",
            "sum/advantage",
            "sum/value",
        ]
        if self.ref_model is not None:  # "sum/kl" whenever there is a reference
            names.append("sum/kl")
        return names

    def _forward_backward(
        self,
        mb: _MicroBatch,
        normalizer: int,
        value_only: bool,
        value_normalizer: int | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Loss of one micro-batch (normalised by whole-batch counts: ``normalizer`` for the
        policy and KL terms, ``value_normalizer`` for the value term, ``normalizer`` when
        ``None``), backward.

        Returns detached sums for the metrics and each row's mean V_old over its completion
        tokens (B,). ``value_only`` (value warm-up): the loss is the value term alone and the LM
        runs without gradient, so only the value head gets gradients; the KL is reported as 0
        (the LM is still the reference then) without running the reference model. A
        micro-batch of value-only trajectories (``mb.value_only``) trains the same way and
        adds nothing to the policy-side metrics.
        """
        if value_normalizer is None:
            value_normalizer = normalizer
        if mb.value_only:
            return self._value_only_backward(mb, value_normalizer)
        cfg = self.config
        chunk = cfg.logits_chunk_size
        # Logprobs only where the loss reads them: every term using them (policy, KL,
        # entropy, ratio, value) is masked by completion_mask, so no logits exist for prompt
        # or padding.
        mask = mb.completion_mask  # (B, T-1)
        targets = mb.targets[mask]  # (N,)
        temperature = mb.temperature  # each trained position's: its trajectory's
        if isinstance(temperature, torch.Tensor):
            temperature = temperature[:, None].expand(mask.shape)[mask]  # (B,) -> (N,)
        kl_tokens: torch.Tensor | None = None
        ref_logprobs: torch.Tensor | None = None
        if self.ref_model is not None and not value_only:
            with torch.no_grad():
                with self._autocast():
                    ref_hidden = final_hidden_states(
                        self.ref_model, mb.input_ids, mb.attention_mask
                    )  # (B, T, H)
                ref_flat, _ = token_logprobs(
                    self.ref_model, ref_hidden[:, :-1][mask], targets, temperature, chunk
                )  # (N,)
            ref_logprobs = _on_grid(ref_flat, mask)  # (B, T-1)
            del ref_hidden

        with self._autocast():
            if value_only:
                # No LM graph at all (saves its activations); the head trains on constants.
                with torch.no_grad():
                    hidden = self.model.hidden_states(mb.input_ids, mb.attention_mask)
                values = self.model.values_from_hidden(hidden)  # (B, T)
            else:
                hidden, values = self.model.hidden_and_values(
                    mb.input_ids, mb.attention_mask
                )  # (B, T, H), (B, T)
        values = values[:, :-1].float()  # (B, T-1): V of the prefix ending at position j
        # Position j predicts token j+1; the float32 output layer runs outside autocast.
        # Value warm-up: logprobs only feed the metrics, so no graph (and no kept logits).
        with torch.no_grad() if value_only else contextlib.nullcontext():
            flat, entropy_flat = token_logprobs(
                self.model.lm, hidden[:, :-1][mask], targets, temperature, chunk
            )  # (N,), (N,)
        logprobs = _on_grid(flat, mask)  # (B, T-1)
        del hidden

        # A_t = r - sg(V_old(s_t)) where the agent gave none. The weights do not change until
        # the optimiser step after all micro-batches, so this forward's values ARE V_old.
        advantages = torch.where(
            mb.has_advantages, mb.advantages, mb.returns - values.detach()
        )  # (B, T-1)
        policy, diagnostics = self._policy_loss_fn(
            logprobs,
            mb.old_logprobs,
            advantages,
            mask,
            normalization=cfg.loss_normalization,
            normalizer=normalizer,
            **self._policy_loss_kwargs,
        )
        value = self._value_loss(values, mb, value_normalizer)
        if ref_logprobs is not None:
            kl_tokens = k3_kl(logprobs, ref_logprobs)  # (B, T-1)
            kl = masked_mean(kl_tokens, mask, cfg.loss_normalization, normalizer)
        else:
            kl = torch.zeros((), device=logprobs.device)
        if value_only:
            total = cfg.c_value * value
        else:
            total = cfg.c_policy * policy + cfg.c_value * value + cfg.c_kl * kl
        total.backward()

        # Diagnostics as sums over tokens; the caller divides by whole-batch counts.
        with torch.no_grad():
            n_tokens = mask.sum()
            entropy = _on_grid(entropy_flat, mask)  # (B, T-1)

            def token_sum(x: torch.Tensor) -> torch.Tensor:
                return torch.where(mask, x, torch.zeros_like(x)).sum()

            parts = {
                "loss/policy": policy.detach(),
                "loss/value": value.detach(),
                "loss/kl": kl.detach(),
                "loss/total": total.detach(),
                "sum/clip_frac": diagnostics["clip_frac"] * n_tokens,
                "sum/ratio_mean": diagnostics["ratio_mean"] * n_tokens,
                "sum/entropy": token_sum(entropy),
                "sum/advantage": token_sum(advantages),
                "sum/value": token_sum(values.detach()),
            }
            if kl_tokens is not None:
                parts["sum/kl"] = token_sum(kl_tokens.detach())
            elif self.ref_model is not None:  # value warm-up: the LM is the reference
                parts["sum/kl"] = torch.zeros((), device=logprobs.device)
            row_values = torch.where(mask, values.detach(), 0.0).sum(-1)  # (B,)
            row_values = row_values / mask.sum(-1).clamp(min=1)  # (B,)
        return parts, row_values

    def _value_loss(
        self, values: torch.Tensor, mb: _MicroBatch, value_normalizer: int
    ) -> torch.Tensor:
        """MSE of ``values`` (B, T-1) against the micro-batch's returns over its completion
        tokens, normalised by the whole batch's ``value_normalizer``."""
        return value_loss(
            values,
            mb.returns,
            mb.completion_mask,
            normalization=self.config.loss_normalization,
            normalizer=value_normalizer,
        )

    def _value_only_backward(
        self, mb: _MicroBatch, value_normalizer: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``_forward_backward`` of value-only trajectories: the value head learns ``V(s_t)``
        towards the reward on frozen LM features; no logits, no reference model, and zeros
        for every policy-side part."""
        cfg = self.config
        mask = mb.completion_mask  # (B, T-1)
        with self._autocast():
            with torch.no_grad():
                hidden = self.model.hidden_states(mb.input_ids, mb.attention_mask)
            values = self.model.values_from_hidden(hidden)  # (B, T)
        del hidden
        values = values[:, :-1].float()  # (B, T-1)
        value = self._value_loss(values, mb, value_normalizer)
        total = cfg.c_value * value
        total.backward()
        with torch.no_grad():
            zero = torch.zeros((), device=values.device)
            parts = dict.fromkeys(self._part_names(), zero)
            parts["loss/value"] = value.detach()
            parts["loss/total"] = total.detach()
            masked = torch.where(mask, values.detach(), 0.0)  # (B, T-1)
            parts["sum/value"] = masked.sum()
            row_values = masked.sum(-1) / mask.sum(-1).clamp(min=1)  # (B,)
        return parts, row_values

    def _check_structure(self, batch: Sequence[Trajectory]) -> None:
        """Programming errors raise (unlike bad numbers, which skip the step)."""
        if len(batch) == 0:
            raise ValueError("Learner.step got an empty batch")
        for i, traj in enumerate(batch):
            if not traj.prompt_ids:
                raise ValueError(
                    f"trajectory {i} has an empty prompt: the first completion token needs "
                    "at least one context token (e.g. BOS) to be predicted from"
                )
            ids = traj.prompt_ids + traj.completion_ids
            if min(ids) < 0 or max(ids) >= self._vocab_size:
                raise ValueError(
                    f"trajectory {i} has token ids outside [0, {self._vocab_size}): "
                    f"min {min(ids)}, max {max(ids)}; was it tokenized for another model?"
                )

    def _skip(self, reason: str) -> dict[str, float]:
        self.skipped_steps += 1
        logger.warning(
            "Learner.step skipped at global_step %d (%s); weights and optimizer unchanged",
            self.global_step,
            reason,
        )
        return {
            "train/skipped_steps": float(self.skipped_steps),
            "train/lr": self._lrs_at(self.global_step)[POLICY_GROUP],
        }

    def _lrs_at(self, step: int) -> dict[str, float]:
        """Learning rate of each parameter group for optimiser step ``step`` (0-based).

        The policy group is 0 during the value warm-up, then warms up linearly over
        ``warmup_steps`` counted from its first trained step; the value head runs at
        ``value_lr`` (else ``lr``) throughout.
        """
        cfg = self.config
        policy_step = step - cfg.value_warmup  # policy updates taken before this one
        if policy_step < 0:
            policy_lr = 0.0
        elif cfg.warmup_steps == 0:
            policy_lr = cfg.lr
        else:
            policy_lr = cfg.lr * min(1.0, (policy_step + 1) / cfg.warmup_steps)
        value_lr = cfg.value_lr if cfg.value_lr is not None else cfg.lr
        return {POLICY_GROUP: policy_lr, VALUE_GROUP: value_lr}

    def _set_lrs(self, step: int) -> dict[str, float]:
        """Set every group's lr from the CURRENT config (a loaded optimizer state carries the
        saved run's lrs; the current config wins, as for every other setting)."""
        lrs = self._lrs_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lrs[group["name"]]
        return lrs

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=TORCH_DTYPES[self.config.dtype])

    # --- weights for the engine -------------------------------------------------------------

    def export_weights(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(lm_state, value_head_state)`` for ``PolicyEngine.load_weights``.

        ``lm_state`` uses Hugging Face parameter names (``model.layers.0.self_attn.q_proj.weight``
        ...), which vLLM's ``model.load_weights`` maps itself; ``lm_head.weight`` is left out
        when tied to the input embedding (vLLM skips it then, and it is the same tensor).
        Tensors are detached and ALIAS the live float32 parameters on the learner's device
        (no copy of a multi-GB model): the consumer must copy them before the next ``step``.
        """
        tied = _embeddings_tied(self.model.lm)
        lm_state = {
            name: tensor.detach()
            for name, tensor in self.model.lm.state_dict().items()
            if not (tied and name == "lm_head.weight")
        }
        head_state = {
            name: tensor.detach() for name, tensor in self.model.value_head.state_dict().items()
        }
        return lm_state, head_state

    # --- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(
        self,
        root: str | os.PathLike,
        step: int | None = None,
        extra: Mapping[str, Any] | None = None,
        keep_last: int | None = None,
    ) -> Path:
        """Write ``root/step_{step:08d}`` atomically and point ``root/latest`` at it.

        The directory is a ``from_pretrained``-loadable model (LM safetensors, config,
        the tokenizer of ``model_path`` (``load_checkpoint_tokenizer``), ``value_head/``)
        plus ``optimizer.pt``, ``learner_state.json`` (step, global_step, config, ``extra``:
        JSON-serialisable, e.g. the data position) and, written last, ``manifest.json`` (the
        size and sha256 of every other file, which ``verify_checkpoint`` checks). Everything
        goes into a temp dir beside it, is fsynced, then renamed; ``latest`` is replaced
        atomically afterwards. A kill at any moment leaves ``latest_checkpoint(root)``
        naming a complete checkpoint. A failed write (a full disk: any ``OSError``) raises
        ``CheckpointError`` in one line (``saving step 12 to runs/x/checkpoints failed: No
        space left on device``) after removing the temp dir: the previous checkpoints and
        ``latest`` are as they were. One writer per ``root``: leftover temp dirs from
        crashed saves are removed. ``keep_last``: after the save, remove all but the newest
        ``keep_last`` checkpoints (``prune_checkpoints``; never the new one or the one
        ``latest`` names); ``None`` keeps all. Returns the checkpoint path.
        """
        root = Path(root)
        step = self.global_step if step is None else step
        check_int("save_checkpoint", "keep_last", keep_last, 1, optional=True)
        # Serialise the JSON first: a non-serialisable `extra` fails before any write.
        state = self._state_json(step, dict(extra or {}))
        name = f"{CHECKPOINT_PREFIX}{step:08d}"
        final = root / name
        tmp: Path | None = None
        added = False  # a new step directory is in place, not yet named by ``latest``
        try:
            root.mkdir(parents=True, exist_ok=True)
            _remove_stale_temps(root)
            tmp = root / f"{_TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
            self._write_checkpoint(tmp, state)
            _fsync_tree(tmp)
            if final.exists():
                # Re-saving a step: move the old one aside (os.replace cannot replace a
                # non-empty dir); latest_checkpoint falls back if we die in between.
                old = root / f"{_TMP_PREFIX}old-{name}-{uuid.uuid4().hex[:8]}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
                added = True
            _fsync_dir(root)
            _write_pointer(root, name)
        except BaseException as err:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if added and isinstance(err, Exception):  # ``latest`` still names the previous
                with contextlib.suppress(OSError):
                    doomed = root / f"{_TMP_PREFIX}failed-{name}-{uuid.uuid4().hex[:8]}"
                    os.replace(final, doomed)
                    shutil.rmtree(doomed, ignore_errors=True)
            if isinstance(err, _WRITE_ERRORS) and not isinstance(err, CheckpointError):
                raise CheckpointError(
                    f"saving step {step} to {root} failed: {_write_failure(err)}"
                ) from err
            raise
        if keep_last is not None:
            try:
                prune_checkpoints(root, keep_last, keep=[final])
            except OSError as err:  # the save itself succeeded
                logger.warning("pruning checkpoints under %s failed: %s", root, err)
        return final

    def _state_json(self, step: int, extra: dict[str, Any]) -> str:
        return json.dumps(
            {
                "format_version": CHECKPOINT_FORMAT,
                "step": step,
                "global_step": self.global_step,
                "skipped_steps": self.skipped_steps,
                "config": self.config.to_dict(),
                "extra": extra,
            },
            indent=2,
        )

    def _write_checkpoint(self, path: Path, state: str) -> None:
        self.model.save_pretrained(path)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(path))  # chat template included
        # Through a Python file, so that a failed write surfaces as its OSError (ENOSPC)
        # rather than only as torch's "unexpected pos" RuntimeError.
        with open(path / OPTIMIZER_FILE, "wb") as f:
            torch.save(self.optimizer.state_dict(), f)
        (path / STATE_FILE).write_text(state)  # marks the directory complete
        _write_manifest(path)  # last: the size and sha256 of everything above

    def load_checkpoint(self, path: str | os.PathLike) -> tuple[int, dict[str, Any]]:
        """Restore weights, value head, optimizer state and step; return ``(step, extra)``.

        ``path`` is a checkpoint directory, which must pass ``verify_checkpoint``
        (``CheckpointError`` naming the bad file otherwise), or a root holding ``latest``
        (``latest_checkpoint``: the newest intact one, falling back past a truncated or
        corrupt one with a warning). The KL reference is not touched (it stays the initial
        policy from ``model_path``). Config differences from the saved run are logged, and
        the current config wins (e.g. a changed lr).
        """
        path = Path(path)
        if _is_complete(path):
            verify_checkpoint(path)
        else:
            resolved = latest_checkpoint(path)
            if resolved is None:
                raise FileNotFoundError(f"no complete checkpoint at or under {path}")
            path = resolved
        state = json.loads((path / STATE_FILE).read_text())
        loaded = PolicyValueModel.from_pretrained(
            path, dtype=torch.float32, device=str(self.device)
        )
        self.model.load_state_dict(loaded.state_dict())
        del loaded
        try:
            optimizer_state = torch.load(
                path / OPTIMIZER_FILE, map_location=self.device, weights_only=True
            )
        except (RuntimeError, EOFError, ValueError) as err:  # a damaged pre-manifest archive
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CheckpointError(f"{path / OPTIMIZER_FILE}: unreadable ({first})") from err
        self.optimizer.load_state_dict(self._split_single_group(optimizer_state))
        self.global_step = int(state["global_step"])
        self._set_lrs(self.global_step)  # the saved groups carry the saved run's lrs
        self.skipped_steps = int(state.get("skipped_steps", 0))
        changed = {
            key: (old, getattr(self.config, key, None))
            for key, old in state["config"].items()
            if _jsonable(getattr(self.config, key, None)) != old
        }
        if changed:
            logger.warning("config differs from checkpoint %s (saved, now): %s", path, changed)
        return int(state["step"]), dict(state["extra"])

    def _split_single_group(self, state: dict[str, Any]) -> dict[str, Any]:
        """Map a one-group optimizer state (checkpoints written before the value head had
        its own group) onto the current groups. Parameters are numbered in
        ``model.parameters()`` order in both, so the per-parameter state carries over as is."""
        saved = state["param_groups"]
        if len(saved) != 1:
            return state
        ids = list(saved[0]["params"])
        groups, start = [], 0
        for group in self.optimizer.param_groups:
            size = len(group["params"])
            groups.append({**saved[0], "name": group["name"], "params": ids[start : start + size]})
            start += size
        if start != len(ids):
            raise ValueError(
                f"checkpoint optimizer state has {len(ids)} parameters, the model {start}"
            )
        return {"state": state["state"], "param_groups": groups}


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for config comparison."""
    return json.loads(json.dumps(value))
