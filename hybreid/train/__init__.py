"""Losses, trainer (torchrun/DDP), schedules and checkpoints."""
