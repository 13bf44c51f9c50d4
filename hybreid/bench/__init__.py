"""Benchmarks behind `hybreid bench`: FLOPs/params, latency, pipeline, matcher."""
