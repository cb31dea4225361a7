"""Losses, the training loop (a generator that yields progress) and checkpoints (pure PyTorch)."""
