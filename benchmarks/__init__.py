"""kvservice's benchmark: throughput, latency tail and memory against a ceiling and a peer.

`python -m benchmarks --help` says how to run it; docs/PERFORMANCE.md holds the latest results.
"""
