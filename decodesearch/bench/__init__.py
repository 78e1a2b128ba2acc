"""Benchmark pieces: datasets (``datasets``), the JSONL results store (``results``) and
summaries/comparisons/plots of results files (``report``)."""

from decodesearch.bench.datasets import Problem, load_problems
from decodesearch.bench.results import ResultsFile, merge_shards, open_results, read_results, shard_path

__all__ = ["Problem", "load_problems", "ResultsFile", "open_results", "read_results", "merge_shards", "shard_path"]
