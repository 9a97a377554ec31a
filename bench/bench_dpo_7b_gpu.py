"""GPU figure for the alignment issue: the Llama-2-7B DPO recipe on a random 7B-shaped model.

Weights don't change speed or memory, so the script writes a randomly
initialised Llama-2-7B-shaped checkpoint (bf16 safetensors), a few hundred
synthetic preference pairs, and runs profiles/llama_2_7b_qlora_dpo.toml's
settings on them for one epoch through `qlora-tui run`. It prints tokens/s and
peak GPU memory from the run's events next to `qlora-tui estimate`'s total.
Needs a CUDA GPU with ~24 GB or more. Usage: python bench/bench_dpo_7b_gpu.py [--pairs 300] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main(sys.argv[1:]))"]
LLAMA_2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)


def write_model(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(**LLAMA_2_7B, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="2GB")
    del model
    torch.cuda.empty_cache()
    vocab = {f"<t{i}>": i for i in range(32000)}
    vocab.update({"<pad>": 0, "<s>": 1, "</s>": 2})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)


def write_pairs(path: Path, count: int, prompt_tokens: int, answer_tokens: int) -> None:
    rng = random.Random(0)

    def words(n: int) -> str:
        return " ".join(f"<t{rng.randrange(3, 32000)}>" for _ in range(n))

    with open(path, "w") as f:
        for _ in range(count):
            f.write(json.dumps({"prompt": words(prompt_tokens), "chosen": words(answer_tokens),
                                "rejected": words(answer_tokens)}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--answer-tokens", type=int, default=512)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    from qlora_tui.runner.profile import load_profile, save_profile

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-dpo7b-"))
    model_dir, data = work / "llama-2-7b-random", work / "pairs.jsonl"
    if not (model_dir / "config.json").exists():
        write_model(model_dir)
    write_pairs(data, args.pairs, args.prompt_tokens, args.answer_tokens)
    profile = load_profile(ROOT / "profiles" / "llama_2_7b_qlora_dpo.toml")
    profile.name, profile.model.id, profile.data.path = "bench-dpo-7b", str(model_dir), str(data)
    profile.data.eval_fraction, profile.train.epochs, profile.train.save_steps = 0.0, 1.0, 10_000
    # A WordLevel tokenizer has no chat template: the runner then uses its plain fallback template.
    path = save_profile(profile, work / "bench-dpo-7b.toml")
    home = work / "home"
    env = dict(os.environ)
    plan = json.loads(subprocess.run([*CLI, "--home", str(home), "estimate", str(path), "--json"], env=env,
                                     capture_output=True, text=True).stdout)
    run = subprocess.run([*CLI, "--home", str(home), "run", str(path)], env=env, capture_output=True, text=True)
    print(run.stdout[-3000:], run.stderr[-3000:])
    events_file = next((home / "runs").glob("*/events.jsonl"))
    steps = [json.loads(line) for line in events_file.read_text().splitlines() if '"type":"step"' in line]
    rates = [e["tokens_per_s"] for e in steps[2:] if "tokens_per_s" in e]
    peak = max(e.get("gpu_mem_peak_gb", 0.0) for e in steps)
    print(f"steps {len(steps)}, tokens/s median {statistics.median(rates):,.0f} (after 2 warm-up steps)")
    print(f"peak GPU memory (torch.cuda.max_memory_allocated) {peak:.2f} GiB = {peak * 1.073741824:.2f} GB")
    print(f"estimator total {plan['total_gb']:.2f} GB (GB = 10^9 bytes)")


if __name__ == "__main__":
    main()
