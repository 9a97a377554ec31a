"""The side-by-side's model and data: a randomly initialised Llama of a given shape, and synthetic rows.

The weights are drawn on the GPU tensor by tensor and written shard by shard in bf16 (never a full fp32 copy), with a
word-level tokenizer, so an 8B model is written in under a minute on a lent card; the rows are prompt/completion
pairs of 100 to 2,000 tokens, log-uniform, so batches mix short and long rows as real data does.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

SIZES: dict[str, dict[str, Any]] = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
               rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5),
    # the dry run's: small enough to load and step on two CPU cores in seconds
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4, vocab_size=4096, max_position_embeddings=4096, rms_norm_eps=1e-5),
}
LLAMA_2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)


def write_random_model(folder: Path, shape: dict[str, Any], shard_gb: float = 4.0, seed: int = 0) -> None:
    """A Llama checkpoint of random bf16 weights, drawn on the GPU tensor by tensor and written shard by shard."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (folder / "config.json").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
                         dtype="bfloat16")
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in LlamaForCausalLM(config).state_dict().items()}
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only for --allow-cpu dry runs
    generator = torch.Generator(device=device).manual_seed(seed)
    weight_map, shard, shard_bytes, total, files = {}, {}, 0, 0, []

    def flush() -> None:
        nonlocal shard, shard_bytes
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update({key: name for key in shard})
        shard, shard_bytes = {}, 0

    for name, dims in shapes.items():
        if name.endswith("norm.weight"):
            tensor = torch.ones(dims, dtype=torch.bfloat16, device=device)
        else:
            tensor = torch.empty(dims, dtype=torch.bfloat16, device=device).normal_(0.0, 0.02, generator=generator)
        shard[name] = tensor.cpu()
        shard_bytes += tensor.numel() * 2
        total += tensor.numel() * 2
        if shard_bytes >= shard_gb * 1e9:
            flush()
    if shard:
        flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                      "weight_map": weight_map}))
    config.save_pretrained(folder)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"<t{i}>": i for i in range(3, shape["vocab_size"])}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)


def write_rows(path: Path, count: int, vocab: int, shortest: int = 100, longest: int = 2000, seed: int = 0) -> None:
    """Prompt/completion rows of `shortest` to `longest` tokens, log-uniform; prompts take 10-40% of a row."""
    rng = random.Random(seed)

    def words(n: int) -> str:
        return " ".join(f"<t{rng.randrange(3, vocab)}>" for _ in range(n))

    with open(path, "w") as f:
        for _ in range(count):
            length = int(math.exp(rng.uniform(math.log(shortest), math.log(longest))))
            prompt = max(4, int(length * rng.uniform(0.1, 0.4)))
            f.write(json.dumps({"prompt": words(prompt), "completion": words(length - prompt)}) + "\n")


def write_pairs(path: Path, count: int, vocab: int, prompt_tokens: int = 512, answer_tokens: int = 512) -> None:
    """Preference pairs (prompt, chosen, rejected) of fixed lengths, for the DPO recipe."""
    rng = random.Random(1)

    def words(n: int) -> str:
        return " ".join(f"<t{rng.randrange(3, vocab)}>" for _ in range(n))

    with open(path, "w") as f:
        for _ in range(count):
            f.write(json.dumps({"prompt": words(prompt_tokens), "chosen": words(answer_tokens),
                                "rejected": words(answer_tokens)}) + "\n")
