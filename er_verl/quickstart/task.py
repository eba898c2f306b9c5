"""A synthetic task with a checkable answer, in GSM8K's format so verl's gsm8k rule reward scores it.

Problems are two-operand sums and differences ("What is 37 + 48?"); the reference solution is one
line of working and ``#### <answer>``. Rows carry ``data_source="openai/gsm8k"``, so verl's default
reward (``verl.utils.reward_score.gsm8k``) gives 1 for the right number after ``####``. A small model
learns it in minutes of SFT, leaves room for GRPO to improve, and its samples within one prompt agree
often (the drafter's acceptance is real, not forced).
"""

from __future__ import annotations

import os
import random

from er_verl.data.gsm8k import to_verl_row


def make_problems(n: int, seed: int, max_operand: int = 99) -> list[dict]:
    """``n`` problems {question, answer}; ``answer`` is the GSM8K-style solution ending in ``#### N``."""
    if n < 1 or max_operand < 1:
        raise ValueError(f"n={n} and max_operand={max_operand} must both be >= 1.")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        if rng.random() < 0.5:
            expr, value = f"{a} + {b}", a + b
        else:
            a, b = max(a, b), min(a, b)
            expr, value = f"{a} - {b}", a - b
        out.append({"question": f"What is {expr}?", "answer": f"{expr} = {value}\n#### {value}"})
    return out


def write_parquet(out_dir: str, n_train: int, n_test: int, seed: int) -> dict[str, str]:
    """train/test parquet in verl's RL format (disjoint seeds); returns the paths."""
    import pandas as pd

    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1_000_003)):
        rows = [to_verl_row(p, split, i) for i, p in enumerate(make_problems(n, s))]
        paths[split] = os.path.join(out_dir, f"{split}.parquet")
        pd.DataFrame(rows).to_parquet(paths[split])
    return paths


def sft_pairs(problems: list[dict]) -> list[tuple[list[dict], str]]:
    """(chat prompt as in the RL rows, response) pairs for SFT: the policy learns the RL prompt format."""
    pairs = []
    for i, p in enumerate(problems):
        row = to_verl_row(p, "sft", i)
        pairs.append((row["prompt"], p["answer"]))
    return pairs
