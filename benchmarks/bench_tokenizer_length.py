"""Sequence lengths of the tiny policy's tokenizer against the local byte-level BPE.

Issue 8 asked whether the default tiny policy should switch to the BPE tokenizer (built by
``langrl.tiny.bpe_tokenizer``) to shorten sequences, which would make everything faster.
This counts tokens of Countdown prompts and solver-written solutions on problems the BPE
was not trained on, for both tokenizers, and prints the ratio (BPE / character-level).

    .venv/bin/python benchmarks/bench_tokenizer_length.py [--problems 500]
"""

from __future__ import annotations

import argparse

from langrl.envs import countdown
from langrl.tiny.bpe_tokenizer import build_bpe_tokenizer
from langrl.tiny.tokenizer import build_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--seed", type=int, default=123, help="problem generator seed (BPE: 0)")
    args = parser.parse_args()

    tokenizers = {
        "character (tiny default)": build_tokenizer(),
        "byte-level BPE": build_bpe_tokenizer(),
    }
    config = countdown.CountdownGeneratorConfig(seed=args.seed)
    texts = {"prompt": [], "solution": []}
    for task in countdown.generate_tasks(config, args.problems):
        texts["prompt"].append(countdown.format_prompt(task))
        texts["solution"].append("".join(countdown.solution_steps(task.numbers, task.target) or []))

    def mean_len(tok, items: list[str]) -> float:
        return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in items) / len(items)

    print(f"mean tokens per text over {args.problems} generated problems")
    print(f"{'text':<10} " + " ".join(f"{name:>26}" for name in tokenizers) + f" {'ratio':>7}")
    for kind, items in texts.items():
        lengths = [mean_len(tok, items) for tok in tokenizers.values()]
        cells = " ".join(f"{v:>26.1f}" for v in lengths)
        print(f"{kind:<10} {cells} {lengths[1] / lengths[0]:>7.2f}")
    print("vocabulary " + " ".join(f"{len(tok):>26}" for tok in tokenizers.values()))


if __name__ == "__main__":
    main()
