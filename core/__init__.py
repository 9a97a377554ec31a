"""What the runner, the registry and the app share: the data home's layout, names, errors, file hashes,
quantization settings, the device probe, base-model resolution and the built-in model.

It imports nothing else of qlora-tui, and torch & co. only inside the functions that need them, so every
part (the app included) may import it.
"""
