"""Benchmarks that ship with kbatch: each prints JSON with its anchor measured in the same run."""
