"""Registering an adapter made elsewhere: any PEFT LoRA directory, checked against its base model first."""

from __future__ import annotations

import shutil
from pathlib import Path

from qlora_tui.registry.basemodel import home_of, resolve_model
from qlora_tui.registry.errors import InvalidAdapterError, RegistryError
from qlora_tui.registry.lora import CONFIG_NAME, WEIGHTS_NAME, plan_adapter, read_adapter_config
from qlora_tui.registry.records import AdapterVersion, NewVersion, check_name
from qlora_tui.registry.staging import work_area
from qlora_tui.registry.store import Store
from qlora_tui.registry.tensors import inventory

# What a usable adapter directory needs; checkpoints and optimizer state stay behind.
KEPT_FILES = (CONFIG_NAME, WEIGHTS_NAME, "README.md", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "chat_template.jinja", "chat_template.json", "added_tokens.json",
              "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "generation_config.json")


def import_adapter(store: Store, source: Path, name: str, *, base: str | None = None,
                   method: str = "") -> AdapterVersion:
    """Register the PEFT LoRA directory `source` as the next version of `name`, after checking it fits its base.

    The base is `base` or the config's base_model_name_or_path; it must be
    available here (built-in, a directory, or in the Hugging Face cache), since
    only then can the tensor shapes be checked against its modules.
    """
    check_name(name)
    source = Path(source)
    if not source.is_dir():
        raise RegistryError(f"{source}: not a directory", hint="import takes a PEFT adapter directory or a .tar "
                                                               "made by qlora-tui export")
    config = read_adapter_config(source)
    base_id = base or config.get("base_model_name_or_path") or ""
    if not base_id:
        raise InvalidAdapterError(f"{source / CONFIG_NAME}: no base_model_name_or_path, so the base model is unknown",
                                  hint="name it with --base MODEL (a Hub id, a directory or builtin:tiny-llama)")
    if Path(base_id).expanduser().is_dir():
        base_id = str(Path(base_id).expanduser().resolve())
    base = resolve_model(home_of(store), base_id, download=False)
    base_dir = base.path
    base_tensors = inventory(base_dir)
    if not base_tensors:
        raise InvalidAdapterError(f"base model {base_id}: {base_dir} has no safetensors weights, so the adapter's "
                                  "shapes cannot be checked", hint="convert the base model to safetensors")
    plan = plan_adapter(source, base_tensors, base_id)
    meta = NewVersion(
        base_model=base_id, kind="adapter", method=method, base_revision=base.revision,
        library_versions={"peft": str(config["peft_version"])} if config.get("peft_version") else {},
        extra={"imported_from": str(source.resolve()),
               "lora": {"r": config["r"], "alpha": config.get("lora_alpha", 8),
                        "target_modules": config.get("target_modules"), "use_rslora": bool(config.get("use_rslora")),
                        "use_dora": bool(config.get("use_dora"))},
               "modules": len(plan.targets)},
    )
    with work_area(store.tmp_root, "import") as area:
        area.path.mkdir()
        for filename in KEPT_FILES:
            if (source / filename).is_file() and not (source / filename).is_symlink():
                shutil.copy2(source / filename, area.path / filename)
        return store.add(name, area.path, meta)
