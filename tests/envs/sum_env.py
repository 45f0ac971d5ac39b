"""A worked example: a third text-step env written only against langrl's public env contract.

``Sum-v0``: add a few small numbers. Importing this module registers it, so any langrl tool
takes it by Gymnasium's ``module:EnvId`` convention, with no change to langrl::

    python scripts/train_agent.py --agent cispo --env sum_env:Sum-v0     # sum_env on the path
    python scripts/evaluate.py --env sum_env:Sum-v0 --k 4 --num-problems 8

What the contract asks of an env (``langrl.envs.base``: ``ReasoningEnv``, whose
``CONTRACT_MEMBERS`` lists what agents call, checked by ``langrl.training.config.check_env``):
the ``split`` and ``reward`` keyword arguments (``dense`` for training, ``sparse`` 0/1 for
evaluation), tasks by index (``num_tasks()``, ``reset(options={"index": i})``), reset info
with ``prompt`` and ``messages``, state snapshots (``get_state``/``set_state``,
``task_info``) and ``reason``/``is_correct`` in the final info. Subclassing
``ReasoningEnv`` gives all of that; a subclass supplies only the task: ``TASK_TYPE``,
``REWARD_PRESETS``, ``load_tasks``, ``format_prompt``, ``format_messages`` and
``grade_answer`` (plus, optionally, a per-step check and its own action tags).

``ThinkSum-v0`` is the same task with tags of its own: ``<think>...</think>`` steps and a
``<final>...</final>`` answer, declared once in ``ACTION_TAGS``; the env's parser, the
splitter of whole completions and every agent's stop strings follow them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from os import PathLike
from typing import Any, ClassVar

import gymnasium as gym

from langrl.envs import ActionTags, Grade, ReasoningEnv, RewardConfig
from langrl.envs.safe_arithmetic import SafeArithmeticError, parse_expression


@dataclass(frozen=True)
class SumTask:
    """Numbers to add."""

    numbers: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"numbers": list(self.numbers)}


class SumEnv(ReasoningEnv[SumTask]):
    """Add the numbers of the prompt.

    ## Description
    The prompt lists two or three numbers in [1, 13] (``Numbers: 3 5 7\\nTarget: sum\\n``,
    close to Countdown's, so that the tiny policy reads it); the answer is their sum.

    ## Action Space
    One ``<step>...</step>`` (free text, not checked) or ``<answer>EXPR</answer>``, where
    ``EXPR`` is evaluated exactly (``3 + 5 + 7`` or ``15``); anything else is malformed.
    (Tag names are ``ACTION_TAGS``: ``ThinkSumEnv`` below uses its own.)

    ## Observation Space
    The prompt followed by every action so far.

    ## Rewards
    ``dense``: 1 if the answer equals the sum, else ``1 - 2 * min(|sum - a| / sum, 1)``;
    -1 for a malformed or missing answer. ``sparse``: 1 if correct, else 0.

    ## Starting State
    Task ``index`` of the split (64 train, 16 test problems, generated from a fixed seed).

    ## Episode End
    Terminated by an answer or a malformed action; truncated by the registry's step limit.

    ## Arguments
    ``split``, ``reward`` and the other ``ReasoningEnv`` arguments.

    ## Version History
    v0: first version.
    """

    TASK_TYPE = SumTask
    REWARD_PRESETS: ClassVar[dict[str, RewardConfig]] = {
        "dense": RewardConfig(
            correct_reward=1.0,
            wrong_reward=-1.0,
            distance_shaping=True,
            format_failure_reward=-1.0,
            no_answer_reward=-1.0,
        ),
        "sparse": RewardConfig(),
    }

    @staticmethod
    def load_tasks(split: str, data_path: str | PathLike | None) -> tuple[SumTask, ...]:
        rng = random.Random(0 if split == "train" else 1)
        size = 64 if split == "train" else 16
        return tuple(
            SumTask(tuple(rng.randint(1, 13) for _ in range(rng.choice((2, 3)))))
            for _ in range(size)
        )

    def format_prompt(self, task: SumTask) -> str:
        return f"Numbers: {' '.join(map(str, task.numbers))}\nTarget: sum\n"

    def format_messages(self, task: SumTask) -> list[dict[str, str]]:
        tags = self.ACTION_TAGS
        answer = f"{tags.answer_open}{tags.answer_close}"
        return [
            {"role": "system", "content": f"Add the numbers; answer in {answer}."},
            {"role": "user", "content": self.format_prompt(task)},
        ]

    def grade_answer(self, task: SumTask, content: str) -> Grade:
        try:
            value = parse_expression(content.strip()).value
        except SafeArithmeticError as err:
            return Grade(err.reason, detail=err.message)
        target = sum(task.numbers)
        if value == target:
            return Grade("correct", value)
        return Grade("wrong_value", value, distance=abs(Fraction(target) - value) / target)


class ThinkSumEnv(SumEnv):
    """``SumEnv`` with its own action tags: a step is ``<think>...</think>`` and the answer
    ``<final>...</final>`` (``<step>``/``<answer>`` are malformed here).

    ## Version History
    v0: first version.
    """

    ACTION_TAGS = ActionTags(step="think", answer="final")


for _env_id, _env_class in (("Sum-v0", SumEnv), ("ThinkSum-v0", ThinkSumEnv)):
    if _env_id not in gym.registry:
        gym.register(
            id=_env_id,
            entry_point=_env_class,
            max_episode_steps=4,
            additional_wrappers=(
                gym.envs.registration.WrapperSpec(
                    name="SyncStepLimit", entry_point="langrl.envs.base:SyncStepLimit", kwargs={}
                ),
            ),
        )
