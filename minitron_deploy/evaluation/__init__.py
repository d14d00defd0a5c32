"""Evaluation of checkpoints: language-model loss on held-out text."""
