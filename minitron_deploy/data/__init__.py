"""Text data: sources, document-level splits, token sequences, and references to them."""
