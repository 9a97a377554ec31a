"""Alignment measured on held-out pairs: which pairs, the measure itself, before, during and after training."""
