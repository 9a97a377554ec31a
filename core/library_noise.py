"""Library messages that read as errors and are not: kept out of the user's view in the child processes.

bitsandbytes (0.50, on CPUs with AVX-512 BF16) tries to fetch a faster 4-bit kernel from the Hugging Face Hub
at import and, offline or untrusted, logs "Failed to load CPU gemm_4bit_forward ...", then uses its own kernel.
Only those exact messages are dropped; every other record of the same logger still shows.
"""

from __future__ import annotations

import logging

KNOWN_NOISE = {  # logger name -> how each dropped message starts
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
}


class DropKnownNoise(logging.Filter):
    """Drops the records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_known_library_noise() -> None:
    """Install the filters (before the libraries are imported, or after: a logger is the same object either way)."""
    for name, prefixes in KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropKnownNoise) for f in logger.filters):
            logger.addFilter(DropKnownNoise(prefixes))
