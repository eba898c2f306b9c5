"""GSM8K jsonl (openai/grade-school-math) → verl's RL parquet rows.

Each row matches verl's ``examples/data_preprocess/gsm8k.py`` so verl's rule reward
(``data_source="openai/gsm8k"`` → ``verl.utils.reward_score.gsm8k``) scores it unchanged:
prompt = one user message asking for the answer after ``####``; ground truth = the number after
``####`` with commas removed.
"""

import json
import os
import re
from typing import Iterator

DATA_SOURCE = "openai/gsm8k"
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
_ANSWER = re.compile(r"#### (\-?[0-9\.\,]+)")


def final_answer(solution: str) -> str:
    """The number after ``####`` in a GSM8K solution, commas removed."""
    match = _ANSWER.search(solution)
    if match is None:
        raise ValueError(f"GSM8K solution has no '#### <number>' line: {solution[-80:]!r}")
    return match.group(1).replace(",", "")


def read_jsonl(path: str) -> Iterator[dict]:
    with open(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def to_verl_row(example: dict, split: str, index: int) -> dict:
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": f"{example['question']} {INSTRUCTION}"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": final_answer(example["answer"])},
        "extra_info": {"split": split, "index": index, "answer": example["answer"], "question": example["question"]},
    }


def write_parquet(src_dir: str, out_dir: str, limit: int | None = None) -> dict[str, str]:
    """Convert ``src_dir/{train,test}.jsonl`` to ``out_dir/{train,test}.parquet``; returns the paths."""
    import pandas as pd

    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split in ("train", "test"):
        src = os.path.join(src_dir, f"{split}.jsonl")
        if not os.path.isfile(src):
            raise ValueError(f"GSM8K source {src!r} does not exist: expected {split}.jsonl in {src_dir!r}.")
        rows = [to_verl_row(ex, split, i) for i, ex in enumerate(read_jsonl(src)) if limit is None or i < limit]
        paths[split] = os.path.join(out_dir, f"{split}.parquet")
        pd.DataFrame(rows).to_parquet(paths[split])
    return paths
