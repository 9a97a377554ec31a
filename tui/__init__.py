"""The Textual app and the `qlora-tui` command. Imports no torch/transformers/peft/trl at load time."""
