"""Side-by-side speed and memory of our deep feature distances against reference implementations.

``python -m benchmarks.run [--quick] [--out benchmarks/] [--device cpu|cuda]`` (``make bench``)
writes ``RESULTS.md`` and ``results.csv``. Every comparison runs in one process on identical
inputs and the same random weights; peak memory is measured one case per fresh subprocess.
"""
