"""cnn-deploy's top layer: what runs every stage together (`python -m cnn_deploy ...`).

`demo` (export -> serve -> classify -> verify -> load-test -> stop), `bench-serving` (Triton vs
in-process ONNX Runtime) and `gpu-check`. It may import `export`, `serving` and `clients`; nothing
imports it.
"""
