"""GSM8K-v0: prompt, answer normalisation, rewards, step checks, data contract."""

from __future__ import annotations

from fractions import Fraction

import gymnasium as gym
import pytest
from envtest_helpers import GSM8K_TASK

from langrl.envs import GSM8KEnv
from langrl.envs.gsm8k import check_step, extract_gold, load_gsm8k, parse_numeric_answer
from langrl.envs.safe_arithmetic import SafeArithmeticError


def test_prompt_and_reset_info(gsm8k):
    obs, info = gsm8k.reset(options=GSM8K_TASK)
    assert obs == f"Question: {GSM8K_TASK['question']}\nAnswer:\n"
    assert info["prompt"] == obs and info["task"] == GSM8K_TASK
    system, user = info["messages"]
    assert system["role"] == "system" and user == {"role": "user", "content": obs}
    for must in ("<step></step>", "<answer></answer>", "one step per tag", "<answer>10</answer>"):
        assert must in system["content"]
    obs, info = gsm8k.reset(options={"question": "2 + 2?", "answer": 4})
    assert info["task"] == {"question": "2 + 2?", "answer": "4"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("72", 72),
        ("$72", 72),
        ("72 dollars", 72),
        ("1,000", 1000),
        ("$1,234,567.50", Fraction("1234567.5")),
        ("-5", -5),
        ("+5", 5),
        ("\u22127", -7),  # Unicode minus sign
        ("-$5", -5),
        ("0.75", Fraction(3, 4)),
        (".75", Fraction(3, 4)),
        ("3/4", Fraction(3, 4)),
        ("3 / 4", Fraction(3, 4)),
        ("2 1/2", Fraction(5, 2)),
        ("50%", 50),
        ("72.", 72),
        ("The answer is 72.", 72),
        ("x = 72", 72),
        ("18 eggs", 18),
        ("5.0", 5),
    ],
)
def test_answer_normalisation(text, value):
    assert parse_numeric_answer(text) == value


def test_equivalent_forms_score_the_same(gsm8k):
    for answer in ("3/4", "0.75", ".75", "$0.75", "0.750"):
        gsm8k.reset(options={"question": "q", "answer": "#### 0.75"})
        assert gsm8k.step(f"<answer>{answer}</answer>")[1] == 1.0, answer


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("many", "no_number"),
        ("5 or 6", "ambiguous_answer"),
        ("12,5", "ambiguous_answer"),
        ("1.2.3", "ambiguous_answer"),
        ("\u0667\u0662", "invalid_character"),
        ("\uff17\uff12", "invalid_character"),
        ("7\u00bd", "invalid_character"),
        ("1/0", "division_by_zero"),
        ("9" * 50, "number_too_large"),
        ("7" * 300, "too_long"),
    ],
)
def test_answer_rejections(text, reason):
    with pytest.raises(SafeArithmeticError) as excinfo:
        parse_numeric_answer(text)
    assert excinfo.value.reason == reason


@pytest.mark.parametrize(
    ("answer", "dense", "sparse", "reason"),
    [
        ("12", 1.0, 1.0, "correct"),
        ("$12.00", 1.0, 1.0, "correct"),
        ("13", 0.0, 0.0, "wrong_value"),
        ("twelve", -1.0, 0.0, "no_number"),
        ("12 or 13", -1.0, 0.0, "ambiguous_answer"),
        ("", -1.0, 0.0, "empty"),
    ],
)
def test_rewards_dense_and_sparse(answer, dense, sparse, reason):
    for mode, expected in (("dense", dense), ("sparse", sparse)):
        env = GSM8KEnv(reward=mode)
        env.reset(options=GSM8K_TASK)
        _, reward, terminated, _, info = env.step(f"<answer>{answer}</answer>")
        assert terminated and info["reason"] == reason and reward == expected, info


def test_step_check_verdicts(gsm8k):
    gsm8k.reset(options=GSM8K_TASK)
    for step, verdict in [
        ("<step>3 boxes hold 3 * 4 = 12 apples.</step>", "ok"),
        ("<step>So 3 * 4 = 13.</step>", "arith_error"),
        ("<step>Let me think.</step>", "unchecked"),
        ("<step>16 - 3 - 4 = <<16-3-4=9>>9 eggs</step>", "ok"),
        ("<step>10 / 3 = 3.33 per day</step>", "ok"),
        ("<step>1/2 * 1/2 = 1/4 of it</step>", "ok"),
        ("<step>80,000 * 1.5 = $120,000</step>", "ok"),
        ("<step>3x + 4 = 28</step>", "unchecked"),
    ]:
        _, reward, terminated, _, info = gsm8k.step(step)
        assert (reward, terminated, info["step_check"]) == (0.0, False, verdict), step


@pytest.mark.parametrize(
    "line, verdict",
    [
        # The left operand is a variable or a word: the equation cannot be checked.
        ("He works M + 4 + 2 = 8 hours", "unchecked"),
        ("y + 5 + 2 = 12", "unchecked"),
        ("So M - 4 = 8", "unchecked"),
        ("Total: -3 + 5 = 3", "arith_error"),  # a sign after a colon is still checked
        ("He has 3 + 4 = 8 apples", "arith_error"),  # words before a full expression
        # A tight fraction is one number ("25 / 1/3" is 25 / (1/3)); either reading fits.
        ("25 / 1/3 = 75", "ok"),
        ("25 / 1/3 = 25/3", "ok"),
        ("25 / 1/3 = 80", "arith_error"),
    ],
)
def test_step_check_has_no_false_alarms_on_variables_or_mixed_fractions(line, verdict):
    assert check_step(line)[0] == verdict


def test_step_check_agrees_with_gold_solutions():
    """The checker is nearly silent on human-written gold steps (few false alarms)."""
    verdicts = [
        check_step(line)[0] for t in load_gsm8k("test") for line in t.answer.split("\n")[:-1]
    ]
    assert verdicts.count("ok") > 4000
    assert verdicts.count("arith_error") <= 3  # the data set's own slips, e.g. "$32 - $20 = $300"


def test_every_gold_answer_scores_one():
    """Contract: each of the 1,319 test golds, given back as <answer>gold</answer>, scores 1.0."""
    tasks = load_gsm8k("test")
    assert len(tasks) == 1319
    env = gym.make("GSM8K-v0", split="test").unwrapped
    for i, task in enumerate(tasks):
        gold_text = task.answer.rsplit("####", 1)[1].strip()
        env.reset(options={"index": i})
        _, reward, terminated, _, info = env.step(f"<answer>{gold_text}</answer>")
        assert (reward, terminated, info["reason"]) == (1.0, True, "correct"), (i, gold_text, info)


def test_gold_extraction():
    assert extract_gold("She makes 9 * 2 = $18.\n#### 18") == 18
    assert extract_gold("#### 1,450,000") == 1450000
    assert extract_gold("-3") == -3
    with pytest.raises(ValueError, match="gold"):
        GSM8KEnv().reset(options={"question": "q", "answer": "#### none"})
