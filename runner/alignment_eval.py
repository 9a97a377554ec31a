"""Alignment measured before and after a preference run, on the same slice of pairs.

For a policy: does it give the chosen answer a higher log-probability than the
rejected one (accuracy), and by how much (margin, in nats)? Before = the
starting policy, which is also DPO's reference; the implicit reward of the
trained adapter is beta * (margin after - margin before) per pair.
For a reward model: does it score chosen above rejected, and by how much?
"""

from __future__ import annotations

from typing import Any

MAX_PAIRS = 256
RL_PROMPTS = 32
BATCH = 8


def _render(tokenizer: Any, turns: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


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
            prompt_ids = _render(tokenizer, prompt, True)
            full = _render(tokenizer, prompt + answer, False)[:max_len]
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
    import torch

    out: list[float] = []
    for start in range(0, len(prompts), BATCH):
        texts = [tokenizer.apply_chat_template(p + a, tokenize=False)
                 for p, a in zip(prompts[start:start + BATCH], answers[start:start + BATCH])]
        enc = tokenizer(texts, add_special_tokens=False, padding=True, truncation=True, max_length=max_len,
                        return_tensors="pt")
        with torch.no_grad():
            logits = model(**{k: v.to(_device(model)) for k, v in enc.items()}).logits
        out.extend(float(x) for x in logits[:, 0])
    return out


def greedy_answers(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]],
                   max_new_tokens: int) -> list[list[dict[str, str]]]:
    """The policy's greedy answer to each prompt (greedy, so before and after are comparable)."""
    import torch

    answers = []
    for prompt in prompts:
        ids = torch.tensor([_render(tokenizer, prompt, True)]).to(_device(model))
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        answers.append([{"role": "assistant", "content": text}])
    return answers


def measure(trainer: Any, tokenizer: Any, rows: list[dict[str, Any]], method: str, max_len: int,
            max_new_tokens: int = 16) -> dict[str, Any]:
    """Per-pair chosen-minus-rejected differences (log-probs, or reward scores for a reward model);
    for online RL, the reward model's score of the policy's greedy answers."""
    model = trainer.model
    was_training = model.training
    model.eval()
    try:
        rows = rows[:MAX_PAIRS]
        prompts = [p["prompt"] for p in rows]
        if method == "rlhf":
            reward_model = trainer.reward_funcs[0]
            answers = greedy_answers(model, tokenizer, prompts[:RL_PROMPTS], max_new_tokens)
            scores = reward_scores(reward_model, tokenizer, prompts[:RL_PROMPTS], answers, max_len)
            return {"pairs": len(scores), "mean_reward": sum(scores) / len(scores), "scores": scores}
        score = reward_scores if method == "reward" else answer_logps
        chosen = score(model, tokenizer, prompts, [p["chosen"] for p in rows], max_len)
        rejected = score(model, tokenizer, prompts, [p["rejected"] for p in rows], max_len)
    finally:
        model.train(was_training)
    deltas = [c - r for c, r in zip(chosen, rejected)]
    return summarize(deltas)


def summarize(deltas: list[float]) -> dict[str, Any]:
    n = len(deltas)
    return {"pairs": n, "accuracy": sum(d > 0 for d in deltas) / n if n else 0.0,
            "margin": sum(deltas) / n if n else 0.0, "deltas": deltas}


def compare(before: dict[str, Any], after: dict[str, Any], method: str, beta: float) -> dict[str, float]:
    """Flat metrics for the registry (numbers only, so show/diff/the app can list them)."""
    if method == "rlhf":
        return {"align/prompts": float(after["pairs"]), "align/reward_before": before["mean_reward"],
                "align/reward_after": after["mean_reward"]}
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
