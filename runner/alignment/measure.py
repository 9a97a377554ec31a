"""Alignment measured before, during and after a preference or RL run, on the same slice of pairs.

For a policy: does it give the chosen answer a higher log-probability than the
rejected one (accuracy), and by how much (margin, in nats)? Before = the
starting policy, which is also DPO's reference; the implicit reward of the
trained adapter is beta * (margin after - margin before) per pair.
For a reward model: does it score chosen above rejected, and by how much?
For online RL: the reward model's score of the policy's answers, sampled as
training samples them (what RL optimises) and greedy (what a user sees).
"""

from __future__ import annotations

from typing import Any

from qlora_tui.runner.data.chat import render_ids

MAX_PAIRS = 256
RL_PROMPTS = 32
RL_SAMPLES = 4  # sampled answers per prompt: the sampled reward is their mean
SAMPLE_SEED = 1234  # the same draws before and after training, so the two means differ by the policy only
BATCH = 8


def _device(model: Any) -> Any:
    return next(p for p in model.parameters()).device


def answer_logps(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]],
                 answers: list[list[dict[str, str]]], max_len: int) -> list[float]:
    """Sum of log-probabilities of each answer's tokens given its prompt."""
    import torch

    out: list[float] = []
    for start in range(0, len(prompts), BATCH):
        rows = []
        for prompt, answer in zip(prompts[start:start + BATCH], answers[start:start + BATCH]):
            prompt_ids = render_ids(tokenizer, prompt, True)
            full = render_ids(tokenizer, prompt + answer, False)[:max_len]
            rows.append((full, min(len(prompt_ids), len(full) - 1)))
        width = max(len(ids) for ids, _ in rows)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(_device(model)), attention_mask=mask.to(_device(model))).logits
        logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        targets = input_ids[:, 1:].to(logps.device)
        token_logps = logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        for i, (ids, prompt_len) in enumerate(rows):
            out.append(float(token_logps[i, prompt_len - 1:len(ids) - 1].sum()))
    return out


def reward_scores(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]],
                  answers: list[list[dict[str, str]]], max_len: int) -> list[float]:
    """The reward model's score of each (prompt, answer), rendered as the reward trainer rendered its pairs."""
    import torch

    out: list[float] = []
    for start in range(0, len(prompts), BATCH):
        texts = [tokenizer.apply_chat_template(p + a, tokenize=False)
                 for p, a in zip(prompts[start:start + BATCH], answers[start:start + BATCH])]
        enc = tokenizer(texts, add_special_tokens=False, padding=True, padding_side="right", truncation=True,
                        max_length=max_len, return_tensors="pt")
        with torch.no_grad():
            logits = model(**{k: v.to(_device(model)) for k, v in enc.items()}).logits
        out.extend(float(x) for x in logits[:, 0])
    return out


def generate_answers(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], max_new_tokens: int,
                     temperature: float | None = None, samples: int = 1) -> list[list[dict[str, str]]]:
    """The policy's answers, `samples` per prompt (prompt-major): greedy when temperature is None, else sampled
    as RL training samples (temperature, no top-k or top-p cut) from a fixed seed."""
    import torch

    rendered = [ids for ids in (render_ids(tokenizer, p, True) for p in prompts) for _ in range(samples)]
    pad = tokenizer.pad_token_id
    settings: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad}
    if temperature is None:
        settings.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        settings.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
    texts: list[str] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SAMPLE_SEED)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(SAMPLE_SEED)
        for start in range(0, len(rendered), BATCH * 2):
            chunk = rendered[start:start + BATCH * 2]
            width = max(len(ids) for ids in chunk)  # left padding: every row's answer starts at the same column
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in chunk]).to(_device(model))
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in chunk]).to(_device(model))
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, **settings)
            texts.extend(tokenizer.batch_decode(out[:, width:], skip_special_tokens=True))
    return [[{"role": "assistant", "content": text}] for text in texts]


def greedy_answers(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]],
                   max_new_tokens: int) -> list[list[dict[str, str]]]:
    """The policy's greedy answer to each prompt (greedy, so before and after are comparable)."""
    return generate_answers(model, tokenizer, prompts, max_new_tokens)


def measure(trainer: Any, tokenizer: Any, rows: list[dict[str, Any]], method: str, max_len: int,
            max_new_tokens: int = 16, temperature: float = 1.0) -> dict[str, Any]:
    """Per-pair chosen-minus-rejected differences (log-probs, or reward scores for a reward model);
    for online RL, the reward model's mean score of the policy's sampled and greedy answers."""
    model = trainer.model
    was_training = model.training
    model.eval()
    try:
        rows = rows[:MAX_PAIRS]
        prompts = [p["prompt"] for p in rows]
        if method == "rlhf":
            return _measure_rl(model, trainer.reward_funcs[0], tokenizer, prompts[:RL_PROMPTS], max_len,
                               max_new_tokens, temperature)
        score = reward_scores if method == "reward" else answer_logps
        chosen = score(model, tokenizer, prompts, [p["chosen"] for p in rows], max_len)
        rejected = score(model, tokenizer, prompts, [p["rejected"] for p in rows], max_len)
    finally:
        model.train(was_training)
    deltas = [c - r for c, r in zip(chosen, rejected)]
    return summarize(deltas)


def _measure_rl(model: Any, reward_model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], max_len: int,
                max_new_tokens: int, temperature: float) -> dict[str, Any]:
    greedy = generate_answers(model, tokenizer, prompts, max_new_tokens)
    greedy_scores = reward_scores(reward_model, tokenizer, prompts, greedy, max_len)
    sampled = generate_answers(model, tokenizer, prompts, max_new_tokens, temperature, RL_SAMPLES)
    repeated = [p for p in prompts for _ in range(RL_SAMPLES)]
    sampled_scores = reward_scores(reward_model, tokenizer, repeated, sampled, max_len)
    texts = [a[0]["content"] for a in greedy]
    return {"pairs": len(prompts), "mean_reward": _mean(sampled_scores), "greedy_reward": _mean(greedy_scores),
            "scores": greedy_scores, "sampled_scores": sampled_scores, "examples": texts[:3],
            "degenerate": _mean([float(is_degenerate(t)) for t in texts])}


def is_degenerate(answer: str) -> bool:
    """An answer no reader would want, however a reward model scores it: empty or without a letter or digit
    (".", "?!"), one or two characters over and over ("....."), or one word making up most of it
    ("is. is. is. is."). A policy whose answers turn into these has found what the reward model over-rewards
    (reward hacking), not what it was meant to learn."""
    text = answer.strip()
    if not any(c.isalnum() for c in text):
        return True
    chars = [c for c in text if not c.isspace()]
    if len(chars) >= 4 and len(set(chars)) <= 2:
        return True
    words = text.split()
    return len(words) >= 4 and max(words.count(w) for w in set(words)) / len(words) >= 0.6


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize(deltas: list[float]) -> dict[str, Any]:
    n = len(deltas)
    return {"pairs": n, "accuracy": sum(d > 0 for d in deltas) / n if n else 0.0,
            "margin": sum(deltas) / n if n else 0.0, "deltas": deltas}


def headline(result: dict[str, Any], method: str) -> dict[str, float]:
    """The figures an `alignment_step` event carries and the monitor draws: accuracy and margin for pairs; the
    sampled and greedy reward for RL."""
    if method == "rlhf":
        return {"align/reward": result["mean_reward"], "align/greedy_reward": result.get("greedy_reward", 0.0)}
    return {"align/accuracy": result["accuracy"], "align/margin": result["margin"]}


def rank_key(figures: dict[str, float], method: str) -> tuple[float, float]:
    """Which of two measurements (headline figures) is better: higher accuracy, then margin; for RL, higher
    sampled reward, then greedy."""
    if method == "rlhf":
        return (figures.get("align/reward", 0.0), figures.get("align/greedy_reward", 0.0))
    return (figures.get("align/accuracy", 0.0), figures.get("align/margin", 0.0))


def compare(before: dict[str, Any], after: dict[str, Any], method: str, beta: float) -> dict[str, float]:
    """Flat metrics for the registry (numbers only, so show/diff/the app can list them)."""
    if method == "rlhf":
        metrics = {"align/prompts": float(after["pairs"]), "align/reward_before": before["mean_reward"],
                   "align/reward_after": after["mean_reward"]}
        if "greedy_reward" in before and "greedy_reward" in after:
            metrics["align/greedy_reward_before"] = before["greedy_reward"]
            metrics["align/greedy_reward_after"] = after["greedy_reward"]
        if "degenerate" in before and "degenerate" in after:
            metrics["align/degenerate_before"] = before["degenerate"]
            metrics["align/degenerate_after"] = after["degenerate"]
        return metrics
    metrics = {
        "align/pairs": float(after["pairs"]),
        "align/accuracy_before": before["accuracy"], "align/accuracy_after": after["accuracy"],
        "align/margin_before": before["margin"], "align/margin_after": after["margin"],
    }
    if method in ("dpo", "kto"):  # ORPO has no reference, so no implicit reward
        implicit = [beta * (a - b) for a, b in zip(after["deltas"], before["deltas"])]
        metrics["align/reward_accuracy"] = sum(x > 0 for x in implicit) / len(implicit) if implicit else 0.0
        metrics["align/reward_margin"] = sum(implicit) / len(implicit) if implicit else 0.0
    return metrics
