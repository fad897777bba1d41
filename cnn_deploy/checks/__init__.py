"""Deployment checks run for real: the CPU compose deployment, the GPU path."""
