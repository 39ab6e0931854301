"""Share of a decode step spent in Python rather than in the C engine.

    python benchmarks/python_overhead.py MODEL.gguf [-n 128] [-t 1]

Times whole decode steps through the public path (Session.step -> Transformer.forward) and, separately, the
time inside the one C call each step makes; the difference is the per-token Python overhead.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edgellm import kernels
from edgellm.formats.gguf import GGUFFile
from edgellm.model.transformer import Transformer
from edgellm.runtime.session import Session
from edgellm.runtime.store import MappedStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=1)
    args = ap.parse_args()
    kernels.set_threads(args.threads)
    g = GGUFFile(args.model)
    model = Transformer.from_store(g.metadata, MappedStore(g))
    compiled = model.compiled()
    if compiled is None:
        raise SystemExit("the C engine is not active (EDGELLM_KERNELS=ref?)")
    inside = []
    original = kernels._C.forward

    def timed(*a):
        t0 = time.perf_counter()
        original(*a)
        inside.append(time.perf_counter() - t0)

    session = Session(model, n_ctx=args.n + 8)
    session.eval_prompt([1])
    kernels._C.forward = timed
    try:
        steps = []
        token = 1
        for _ in range(args.n):
            t0 = time.perf_counter()
            logits = session.step(token)
            token = int(np.argmax(logits))
            steps.append(time.perf_counter() - t0)
    finally:
        kernels._C.forward = original
    step, c = np.median(steps), np.median(inside)
    print(f"{args.model}: {1 / step:.1f} tok/s, step {step * 1e3:.3f} ms, in C {c * 1e3:.3f} ms, "
          f"Python {100 * (step - c) / step:.1f}% of the step (argmax included)")  # fmt: skip


if __name__ == "__main__":
    main()
