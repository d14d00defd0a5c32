"""Llama checkpoint I/O and shapes."""
