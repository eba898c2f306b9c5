"""A stricter GSM8K reward, loaded by verl through ``reward.custom_reward_function.{path,name}``.

verl's own GSM8K rule (``verl.utils.reward_score.gsm8k``, strict method) looks at the last 300
characters and takes the *last* ``#### <number>`` it finds, so a response may keep talking after its
answer or state several answers. This one asks for the format the prompt asks for:

- the response contains ``####`` exactly once, and
- its last non-empty line is exactly ``#### <number>`` (``-12``, ``1,000`` and ``3.5`` are numbers).

score = 1.0            if the format holds and the number (commas removed) equals the ground truth
        format_score   if the format holds and the number is wrong (0.0 unless set through reward_kwargs)
        0.0            otherwise

verl's naive reward manager calls it once per response with keyword arguments; keys of the returned
dict other than ``score`` are logged as extra reward metrics (``acc``, ``strict_format``).
"""

import re
from typing import Any, Optional

GSM8K_DATA_SOURCE = "openai/gsm8k"
_ANSWER_LINE = re.compile(r"#### (-?[0-9][0-9,]*(?:\.[0-9]+)?)")


def strict_final_answer(solution_str: str) -> Optional[str]:
    """The number on the response's one ``#### <number>`` line, commas removed; None if the format fails."""
    if solution_str.count("####") != 1:
        return None
    lines = [line.strip() for line in solution_str.strip().splitlines()]
    match = _ANSWER_LINE.fullmatch(lines[-1]) if lines else None
    return match.group(1).replace(",", "") if match else None


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: Optional[dict] = None,
    format_score: float = 0.0,
    **kwargs: Any,
) -> dict[str, float]:
    """verl's custom-reward signature; ``format_score`` comes from ``reward.custom_reward_function.reward_kwargs``."""
    if data_source != GSM8K_DATA_SOURCE:
        raise ValueError(
            f"strict_gsm8k_reward scores data_source={GSM8K_DATA_SOURCE!r} only, got {data_source!r}; "
            "leave reward.custom_reward_function.path unset to use verl's default scorers."
        )
    answer = strict_final_answer(solution_str)
    correct = answer is not None and answer == str(ground_truth).replace(",", "")
    if answer is None:
        score = 0.0
    else:
        score = 1.0 if correct else float(format_score)
    return {"score": score, "acc": float(correct), "strict_format": float(answer is not None)}
