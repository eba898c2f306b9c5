"""Supervised fine-tuning of a small policy on the quickstart task (plain torch, one device).

Loss: next-token cross-entropy on the response tokens only (the chat-formatted prompt is context).
The model is a fresh Qwen2 of a small shape whose every Linear fits the int4 drafter (AWQ-Marlin).
"""

from __future__ import annotations

import math
import os
import time


def encode(tokenizer, pairs, max_len: int = 192):
    """Token ids and loss masks (1 on response tokens and the closing <|im_end|>) per pair."""
    examples = []
    for prompt, response in pairs:
        head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        ids_prompt = tokenizer(head, add_special_tokens=False)["input_ids"]
        ids_resp = tokenizer(response + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        ids = (ids_prompt + ids_resp)[:max_len]
        mask = ([0] * len(ids_prompt) + [1] * len(ids_resp))[:max_len]
        examples.append((ids, mask))
    return examples


def train(model, tokenizer, pairs, *, steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
          device: str = "cuda", log_every: int = 100, log=print) -> list[float]:
    """Train in place; returns the loss of every step."""
    import torch

    torch.manual_seed(seed)
    data = encode(tokenizer, pairs)
    pad = tokenizer.pad_token_id
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)
    losses, start = [], time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=gen).tolist()
        width = max(len(data[i][0]) for i in idx)
        ids = torch.full((batch_size, width), pad, dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for row, i in enumerate(idx):
            seq, m = data[i]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(m)] = torch.tensor(m)
        ids, mask = ids.to(device), mask.to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            logits = model(input_ids=ids, attention_mask=(ids != pad) | (mask > 0)).logits[:, :-1].float()
        target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                 ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss))
        if log_every and (step + 1) % log_every == 0:
            log(f"sft step {step + 1}/{steps}: loss {losses[-1]:.4f} ({time.perf_counter() - start:.0f} s)")
    return losses


def exact_match(model, tokenizer, problems, device: str = "cuda", max_new_tokens: int = 24) -> float:
    """Greedy accuracy (the number after ``####``) on ``problems``, with verl's gsm8k scorer."""
    import torch
    from verl.utils.reward_score.gsm8k import compute_score

    from er_verl.quickstart.task import sft_pairs

    model.eval()
    hits = 0
    tokenizer.padding_side = "left"
    with torch.no_grad():
        for (prompt, _), p in zip(sft_pairs(problems), problems):
            head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            ids = tokenizer(head, return_tensors="pt", add_special_tokens=False).to(device)
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
            hits += compute_score(text, p["answer"].split("#### ")[-1]) > 0
    return hits / max(1, len(problems))


def build_policy(out_dir: str, problems, *, steps: int, vocab_size: int = 1024, shape: str = "quickstart",
                 device: str = "cuda", seed: int = 0, log=print) -> dict:
    """Tokenizer (BPE on the task's text) + fresh model of ``shape`` + SFT; saved to ``out_dir`` (bf16)."""
    import torch
    from transformers import AutoModelForCausalLM

    from er_verl.data.gsm8k import INSTRUCTION
    from er_verl.models.tiny import build_random_model, build_tokenizer
    from er_verl.quickstart.task import sft_pairs

    tok_dir = os.path.join(out_dir, "tokenizer")
    texts = [f"{p['question']} {p['answer']}" for p in problems]
    texts += [INSTRUCTION] * 50  # the RL prompt's instruction: a few tokens, not dozens
    build_tokenizer(texts, vocab_size, tok_dir)
    build_random_model(shape, tok_dir, out_dir, seed=seed)
    model = AutoModelForCausalLM.from_pretrained(out_dir, torch_dtype=torch.float32)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    losses = train(model, tokenizer, sft_pairs(problems), steps=steps, device=device, seed=seed, log=log)
    model.to(torch.bfloat16).save_pretrained(out_dir)
    return {"sft_steps": steps, "first_loss": losses[0], "last_loss": losses[-1]}
