"""Speed and memory benchmarks (never run in tests): ``scripts/benchmark.py`` is the command line."""

from flowalign.benchmark.arch import ArchSpec, build_arch_pipeline, load_arch_spec
from flowalign.benchmark.models import BenchModel, build_bench_model
from flowalign.benchmark.suite import BenchConfig, run_benchmark
from flowalign.benchmark.table import format_table

__all__ = ["ArchSpec", "BenchConfig", "BenchModel", "build_arch_pipeline", "build_bench_model", "format_table",
           "load_arch_spec", "run_benchmark"]
