"""Small models made offline: a trained BPE tokenizer and randomly initialised HF checkpoints."""
