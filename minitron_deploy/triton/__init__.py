"""Triton Inference Server: model repositories (torch / TensorRT-LLM) and a local server.

`package_triton(model_dir, out_repo, PackageConfig(...))` writes a repository;
`triton.server.TritonServer(repo)` serves one with the tritonserver bundled in nvidia-pytriton.
Importing this package does not import torch.
"""

from minitron_deploy.triton.config import PackageConfig
from minitron_deploy.triton.repo import package_triton

__all__ = ["PackageConfig", "package_triton"]
