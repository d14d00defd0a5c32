"""Launching distributed stages (torchrun, SLURM) from the one `run` orchestrator."""
