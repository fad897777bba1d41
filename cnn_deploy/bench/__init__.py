"""Benchmarks: each one measures through the one harness (`cnn_deploy.bench.harness`)."""
