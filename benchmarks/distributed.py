"""Pipeline stages on Ray against one process, and the planner's prediction for the same split, in one run.

    python benchmarks/distributed.py -m smollm2-135m gemma3-270m --host host.yaml --stages 2,4 -n 64 -r 3 [--json F]

For each model:
1. greedy tokens (--check tokens after a fixed prompt) of 2 and 4 stages against one process: identical or not;
2. decode (tg-n, one stream) in one process at 1 and 2 threads, and over N stages of 1 thread each, alternating
   rounds, medians; per stage compute, per message hop latency and link bytes per token from the stages' traces;
3. four streams over 2 stages (batched decode, micro-batches pipelined) against one stream over 2 stages;
4. the planner (`edgellm calibrate` profile --host, 1 thread; the link calibrated here with empty stages) for the
   split the run used: per stage time, link bytes per token, decode tok/s.

The link calibration chains N no-op Ray actors in a compiled graph and times a hidden-state message through them:
per message latency (what the planner takes as --link-latency-us) and bandwidth from a 4 MB message.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time

import numpy as np

from edgellm.distributed.pipeline import PipelineModel
from edgellm.formats.gguf import GGUFFile
from edgellm.hub import resolve
from edgellm.model.transformer import Transformer
from edgellm.runtime.kv_cache import cache_for
from edgellm.runtime.store import MappedStore

PROMPT = [1, 504, 3458, 282, 4064, 314, 9009, 30]  # token ids below every model's vocabulary


def cpu_name() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


class _Echo:
    """A stage that works `busy_ms` (NumPy on one core) and passes the message on."""

    def __init__(self, busy_ms: float):
        self.busy_s = busy_ms * 1e-3
        self.a = np.ones((64, 64), np.float32)

    def handle(self, x):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < self.busy_s:
            self.a = self.a * np.float32(1.0000001)
        return x


def calibrate_link(n_stages: int, hidden_bytes: int, busy_ms: float = 0.0, rounds: int = 500) -> dict:
    """Per message latency of a hidden state through n stages that each work `busy_ms` (n + 1 messages; on a
    machine with fewer cores than stages the waiting stages' readers compete with the working one), and
    bandwidth at 4 MB."""
    import ray
    from ray.dag import InputNode

    actors = [ray.remote(num_cpus=0)(_Echo).remote(busy_ms) for _ in range(n_stages)]
    with InputNode() as inp:
        node = inp
        for a in actors:
            node = a.handle.bind(node)
    dag = node.experimental_compile(_buffer_size_bytes=8 << 20)
    small, big = np.zeros(hidden_bytes // 4, np.float32), np.zeros(1 << 20, np.float32)
    for _ in range(200):
        dag.execute(small).get()
    t0 = time.perf_counter()
    for _ in range(rounds):
        dag.execute(small).get()
    latency = ((time.perf_counter() - t0) / rounds - n_stages * busy_ms * 1e-3) / (n_stages + 1)
    t0 = time.perf_counter()
    for _ in range(50):
        dag.execute(big).get()
    per_message = ((time.perf_counter() - t0) / 50 - n_stages * busy_ms * 1e-3) / (n_stages + 1)
    logging.getLogger("ray.dag.compiled_dag_node").setLevel(logging.CRITICAL)  # its notes on the killed actors
    for a in actors:  # no teardown: killing the actors ends the graph (a teardown here can hang)
        ray.kill(a)
    return {"latency_us": latency * 1e6, "gbps": big.nbytes / max(per_message - latency, 1e-9) / 1e9,
            "busy_ms": busy_ms}  # fmt: skip


def decode_tps(model, n: int) -> float:
    """One stream: n greedy tokens after the prompt, tokens per second."""
    cache = cache_for(model, len(PROMPT) + n + 1)
    logits = model.forward(np.array(PROMPT), cache)
    t0 = time.perf_counter()
    for _ in range(n):
        logits = model.forward(np.array([int(logits[0].argmax())]), cache)
    return n / (time.perf_counter() - t0)


def greedy(model, n: int) -> list[int]:
    cache = cache_for(model, len(PROMPT) + n + 1)
    logits, out = model.forward(np.array(PROMPT), cache), []
    for _ in range(n):
        out.append(int(logits[0].argmax()))
        logits = model.forward(np.array([out[-1]]), cache)
    return out


def streams_tps(model, n_streams: int, n: int) -> float:
    """n_streams sequences decoded together (one forward_batch per step), total tokens per second."""
    caches = [model.new_cache(len(PROMPT) + n + 1) for _ in range(n_streams)]
    logits = model.forward_batch([(np.array(PROMPT), c) for c in caches], [True] * n_streams)
    t0 = time.perf_counter()
    for _ in range(n):
        logits = model.forward_batch([(np.array([int(r.argmax())]), c) for r, c in zip(logits, caches)],
                                     [True] * n_streams)  # fmt: skip
    return n * n_streams / (time.perf_counter() - t0)


def predict(path, host: str, splits, link: dict, ctx: int) -> dict:
    """The planner's decode for this split: per stage seconds, link bytes and seconds, tok/s (1 thread a stage)."""
    from edgellm.planner.device import load_device
    from edgellm.planner.estimate import ACTIVATION_BYTES, Scenario, decode_ops, rates_for
    from edgellm.planner.model import load_model
    from edgellm.planner.multi import TOKEN_BYTES, layer_costs
    from edgellm.planner.partition import Accelerator, Link, pipeline

    spec, device = load_model(str(path), None, None), load_device(host)
    sc = Scenario(threads=1, ctx=ctx, prompt=len(PROMPT))
    rates = rates_for(device, sc.threads, sc.unit, sc.memory_efficiency)
    fixed = 0.0 if rates.stream_gbps else rates.engine.get("decode_layer_us", 0.0) * 1e-6
    layers, bw = layer_costs(spec, decode_ops(spec, sc.ctx, 0.0, sc.cache_type, 0), rates, True, 0.0, fixed)
    accs = [Accelerator(f"stage{i}", bw, None, rates.compute_gflops) for i in range(len(splits))]
    cuts = tuple(a for a, _ in splits[1:])
    p = pipeline(layers, accs, Link(link["gbps"], link["latency_us"]), spec.shape.d_model * ACTIVATION_BYTES,
                 feedback_bytes=TOKEN_BYTES, cuts=cuts)  # fmt: skip
    return {"decode_tps": 1.0 / p.seconds, "stage_ms": [1e3 * t for t in p.stage_seconds],
            "link_ms": 1e3 * p.link_seconds, "link_bytes_per_token": p.link_bytes}  # fmt: skip


def run_model(name: str, args) -> dict:
    path = resolve(name)
    g = GGUFFile(path)
    model = Transformer.from_store(g.metadata, MappedStore(g))
    out: dict = {"model": path.name, "stages": {}}
    ref = greedy(_with_threads(model, 1), args.check)
    singles = {t: [] for t in (1, 2)}
    for n_stages in args.stages:
        # the planner's split (as the runtime makes it) at a rough link, then the link calibrated with stages that
        # work as long as the planner says a stage works
        splits = PipelineModel.plan_splits(model, n_stages)
        idle = calibrate_link(n_stages, model.config.n_embd * 4)
        rough = predict(path, args.host, splits, idle, len(PROMPT) + args.n_gen // 2)
        link = calibrate_link(n_stages, model.config.n_embd * 4, busy_ms=statistics.mean(rough["stage_ms"]))
        link["idle_latency_us"] = idle["latency_us"]
        staged = PipelineModel(model, str(path), n_stages, 1)
        try:
            same = greedy(staged, args.check) == ref
            speeds, stats = [], []
            for _ in range(args.rounds):  # alternating: one process at 1 and 2 threads, then the stages
                for t in (1, 2):
                    singles[t].append(decode_tps(_with_threads(model, t), args.n_gen))
                staged.reset_stats()
                speeds.append(decode_tps(staged, args.n_gen))
                stats.append(staged.stats.to_dict())
            row = {
                "splits": staged.splits, "greedy_identical": same, "decode_tps": statistics.median(speeds),
                "stage_ms_per_token": [statistics.median(s["stage_ms_per_token"][i] for s in stats) for i in range(n_stages)],
                "hop_ms": [statistics.median(s["hop_ms"][i] for s in stats) for i in range(n_stages + 1)],
                "link_bytes_per_token": stats[-1]["link_bytes_per_token"], "link_calibration": link,
                "predicted": predict(path, args.host, staged.splits, link, len(PROMPT) + args.n_gen // 2),
            }  # fmt: skip
            if n_stages == 2:
                one, four = [], []
                for _ in range(args.rounds):
                    one.append(decode_tps(staged, args.n_gen))
                    four.append(streams_tps(staged, 4, args.n_gen))
                row["one_stream_tps"], row["four_streams_tps"] = statistics.median(one), statistics.median(four)
            out["stages"][n_stages] = row
        finally:
            staged.close()
    out["single_tps"] = {t: statistics.median(v) for t, v in singles.items()}
    return out


def _with_threads(model, t: int):
    model.n_threads = t
    return model


def report(results: list[dict]) -> None:
    print(f"CPU: {cpu_name()}; one stage = one Ray actor with 1 thread; one process at 1 and 2 threads")
    for r in results:
        s1, s2 = r["single_tps"][1], r["single_tps"][2]
        print(f"\n{r['model']}: one process {s1:.1f} tok/s (-t 1), {s2:.1f} tok/s (-t 2)")
        print("| stages | split | greedy = one process | tok/s | predicted | stage ms (measured / predicted) | "
              "hops ms (driver→0 … →driver) | link B/token (measured / planner) |")
        print("|---|---|---|---|---|---|---|---|")
        for n, row in r["stages"].items():
            p = row["predicted"]
            stages = ", ".join(f"{m:.2f}/{q:.2f}" for m, q in zip(row["stage_ms_per_token"], p["stage_ms"]))
            hops = ", ".join(f"{h:.2f}" for h in row["hop_ms"])
            split = " ".join(f"{a}-{b - 1}" for a, b in row["splits"])
            print(f"| {n} | {split} | {'yes' if row['greedy_identical'] else 'NO'} | {row['decode_tps']:.1f} | "
                  f"{p['decode_tps']:.1f} ({row['decode_tps'] / p['decode_tps'] - 1:+.0%}) | {stages} | {hops} | "
                  f"{row['link_bytes_per_token']:.0f} / {p['link_bytes_per_token']:.0f} |")  # fmt: skip
        two = r["stages"].get(2)
        if two and "four_streams_tps" in two:
            print(f"2 stages: 4 streams {two['four_streams_tps']:.1f} tok/s vs 1 stream {two['one_stream_tps']:.1f} "
                  f"({two['four_streams_tps'] / two['one_stream_tps']:.2f}x)")  # fmt: skip
        for n, row in r["stages"].items():
            link = row["link_calibration"]
            print(f"link calibration ({n} stages): {link['idle_latency_us']:.0f} us per message between idle stages, "
                  f"{link['latency_us']:.0f} us with stages working {link['busy_ms']:.2f} ms each (the planner's "
                  f"latency); {link['gbps']:.2f} GB/s")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--models", nargs="+", default=["smollm2-135m"])
    ap.add_argument("--host", required=True, help="`edgellm calibrate` profile of this machine")
    ap.add_argument("--stages", default="2,4", help="stage counts, e.g. 2,4")
    ap.add_argument("-n", "--n-gen", type=int, default=64)
    ap.add_argument("-r", "--rounds", type=int, default=3)
    ap.add_argument("--check", type=int, default=32, help="greedy tokens compared with one process")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    args.stages = [int(s) for s in args.stages.split(",")]
    results = [run_model(m, args) for m in args.models]
    report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_name(), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
