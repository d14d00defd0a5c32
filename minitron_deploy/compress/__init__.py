"""Compression algorithms: importance (metrics, scores), pruning targets, width slicing, layer
ranking and zero-shot sensitivity, with their configs in `config.py`. Importing it is cheap."""
