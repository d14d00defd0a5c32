"""minitron-deploy: Minitron-style pruning, distillation and deployment for Llama checkpoints."""

__version__ = "0.1.0"
