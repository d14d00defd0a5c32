"""The ISL/OSL x batch throughput matrix and its reports (JSON, markdown, PNG)."""

from minitron_deploy.bench.config import BenchConfig, parse_matrix
from minitron_deploy.bench.matrix import run_matrix
from minitron_deploy.bench.report import write_reports

__all__ = ["BenchConfig", "parse_matrix", "run_matrix", "write_reports"]
