"""onnxruntime peer for `ucad bench-backbone`: ms per plain pass of an exported ucad backbone.

usage: python -c "$(cat ort_bench.py)" FILE RUNS THREADS...   (prints JSON: {"THREADS": ms, ...})
"""
import json
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def median_ms(path, runs, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    shapes = {i.name: [1 if isinstance(d, str) else d for d in i.shape] for i in session.get_inputs()}
    rng = np.random.default_rng(1)
    feeds = {
        "image": rng.standard_normal(shapes["image"]).astype(np.float32),
        "prompt": np.zeros(shapes["prompt"], np.float32),
        "prompt_gate": np.zeros(shapes["prompt_gate"], np.float32),
    }
    for _ in range(2):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


path, runs = sys.argv[1], int(sys.argv[2])
print(json.dumps({threads: median_ms(path, runs, int(threads)) for threads in sys.argv[3:]}))
