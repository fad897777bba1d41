"""cnn-deploy's top layer: what runs every stage together (`python -m cnn_deploy ...`).

- `cli.py`, `demo.py`: the commands; the demo (export -> serve -> classify -> verify -> load-test -> stop).
- `bench/`: benchmarks (served vs in-process, load generator vs perf_analyzer, INT8, images, threads).
- `drills/`: failure drills: `harness.py` measures, `judges.py` (pure) decides, `run.py` runs them.
- `report/`: the lecture's costs measured (`build.py`, `roof.py` the machine's roofline, `html.py`).
- `checks/`: the compose deployment really run, and the GPU checks.
- `harness.py`: the one harness under all of them: a scratch repository, a temporary Triton on free
  ports, load-test steps whose every answer must be verified and right.

It may import `export`, `serving` and `clients`; nothing imports it. Import contracts
(pyproject.toml) keep bench/drills/report/checks independent of each other, above the harness.
"""
