"""Reference outputs (and timings) from onnxruntime, for basalt-infer's tests
and benchmark.

Reads one JSON object on stdin:
    {"model": "/path/model.onnx",
     "inputs": {"name": {"dtype": "float32", "shape": [1, 3], "data": [...]}},
     "repeat": 0}
and writes {"outputs": {"name": {"shape": [...], "data": [...]}},
"latencies_ms": [...]} on stdout. With "repeat": N > 0 the model is run N
more times after one warm-up run, and each run's wall time is listed.
onnxruntime runs on one thread (intra_op_num_threads=1), like tract here.
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    req = json.load(sys.stdin)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(req["model"], opts, providers=["CPUExecutionProvider"])
    feeds = {
        name: np.asarray(t["data"], dtype=t["dtype"]).reshape(t["shape"])
        for name, t in req["inputs"].items()
    }
    names = [o.name for o in sess.get_outputs()]
    results = sess.run(names, feeds)
    latencies = []
    for _ in range(req.get("repeat", 0)):
        start = time.perf_counter()
        sess.run(names, feeds)
        latencies.append((time.perf_counter() - start) * 1000.0)
    json.dump(
        {
            "outputs": {
                n: {"shape": list(r.shape), "data": r.reshape(-1).astype(np.float64).tolist()}
                for n, r in zip(names, results)
            },
            "latencies_ms": latencies,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
