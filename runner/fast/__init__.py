"""The fast training path: attention, packing, kernels and LoRA layers chosen per run, each falling back to the
plain path with its reason."""
