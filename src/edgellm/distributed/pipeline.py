"""The model's layers split over N Ray actors (pipeline stages), driven as one model.

Each stage (distributed/stage.py) maps the model file and builds the engine's plan for its run of layers only;
the first embeds, the last scores. On one host the stages are chained in a Ray compiled graph: a message goes
driver → stage 0 → … → stage N-1 → driver over shared-memory channels (a hop between idle stages costs
0.15-0.25 ms, a plain actor call about a millisecond); stages on several hosts talk by plain actor calls. Several
messages can be in flight, so with several sequences `forward_batch` cuts the batch into micro-batches, one per
stage, and stage i works on one while stage i+1 works on the one before (pipelining).

`PipelineModel` stands in for the Transformer wherever a model runs (Session, the server's scheduler, bench): the
KV caches live in the stages, and the driver holds `RemoteCache`s that say how much of each they hold.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, EdgeLLMError, UnsupportedError
from ..formats.quants import GGMLType
from ..planner.partition import MAX_ACCELERATORS
from ..runtime.kv_cache import CACHE_TYPES, CacheSpan
from .stage import HIDDEN_DTYPE, MAX_CACHES, Stage

MAX_STAGES = MAX_ACCELERATORS  # what the planner plans
GET_TIMEOUT_S = 600.0  # one message through every stage (a long prompt on a slow device included)
TEARDOWN_S = 5.0  # waited for a graph's teardown on close


class StageFailure(EdgeLLMError):
    """A stage died or failed; the request fails, the pipeline is rebuilt for the next one."""


def split_layers(layer_bytes: list[float], n_stages: int) -> list[tuple[int, int]]:
    """Contiguous layer runs for n_stages with the least bytes read by the busiest stage (decode time goes with the
    bytes read) among the planner's candidate splits (planner/partition.py: every split for two stages, splits
    near the even one for more), over the model file's own tensor sizes."""
    from ..planner.partition import Accelerator, LayerCost, Link, pipeline

    if not 1 <= n_stages <= min(MAX_STAGES, len(layer_bytes)):
        raise ConfigError(f"--stages must be between 1 and {min(MAX_STAGES, len(layer_bytes))} for a model of "
                          f"{len(layer_bytes)} layers, got {n_stages}")  # fmt: skip
    layers = [LayerCost(b, b, 0.0) for b in layer_bytes]
    accs = [Accelerator(f"stage{i}", 1.0, None, None) for i in range(n_stages)]
    part = pipeline(layers, accs, Link(1.0), 0.0)
    return [(s[0], s[-1] + 1) for s in part.stage_layers]


def layer_read_bytes(store, n_layers: int, output_name: str) -> list[float]:
    """Bytes of weights each layer reads per decoded token, the head counted with the last layer."""
    out = [0.0] * n_layers
    for name in store.names():
        info = store.info(name)
        if name.startswith("blk."):
            out[int(name.split(".")[1])] += info.n_bytes
    out[-1] += store.info(output_name).n_bytes
    return out


@dataclass(eq=False)
class RemoteCache(CacheSpan):
    """The driver's view of one sequence's KV cache, which lives in the stages (each holds its layers' share)."""

    n_ctx: int
    cache_type: str
    id: int = field(default_factory=itertools.count().__next__)
    n_past: int = 0
    n_bytes: int = 0  # held by the stages, not here

    @property
    def type(self) -> GGMLType:
        return CACHE_TYPES[self.cache_type]


@dataclass
class LinkStats:
    """What crossed the links and how long it took, summed over the messages of the decode steps counted."""

    tokens: int = 0  # decoded tokens (one per sequence per step)
    wall_s: float = 0.0
    stage_s: list[float] = field(default_factory=list)  # compute per stage
    hop_s: list[float] = field(default_factory=list)  # driver→0, 0→1, …, N-1→driver
    hop_bytes: list[float] = field(default_factory=list)  # hidden states over each inter-stage hop
    messages: int = 0

    def to_dict(self) -> dict:
        n = max(self.tokens, 1)
        m = max(self.messages, 1)
        return {
            "tokens": self.tokens, "messages": self.messages,
            "stage_ms_per_token": [1e3 * s / n for s in self.stage_s],
            "hop_ms": [1e3 * s / m for s in self.hop_s],  # per message
            "link_bytes_per_token": sum(self.hop_bytes) / n,  # between stages (the planner's link bytes)
            "hop_bytes_per_token": [b / n for b in self.hop_bytes],
            "wall_ms_per_token": 1e3 * self.wall_s / n,
        }  # fmt: skip


class Pipeline:
    """N stage actors on a Ray cluster (a local one unless `address` names one) chained in a compiled graph."""

    def __init__(self, model_path: str, splits: list[tuple[int, int]], n_threads: int, link_gbps: float | None = None,
                 link_latency_us: float = 0.0, address: str | None = None, kernel_path: str | None = None,
                 message_bytes: int = 1 << 20, transport: str = "auto"):
        """transport: "graph" (a compiled graph), "calls" (plain actor calls) or "auto" (the graph when every
        stage is on one host)."""
        if transport not in ("auto", "graph", "calls"):
            raise ConfigError(f"unknown transport '{transport}'; choose auto, graph or calls")
        self.requested_transport = transport
        try:
            import ray
        except ImportError:
            raise UnsupportedError("--stages runs the stages on Ray: pip install 'edgellm[distributed]'") from None
        self._ray = ray
        self.model_path, self.splits, self.n_threads = model_path, splits, n_threads
        self.link_gbps, self.link_latency_us, self.kernel_path = link_gbps, link_latency_us, kernel_path
        self.message_bytes = message_bytes  # channels start this large (a larger message makes them grow)
        if not ray.is_initialized():
            _init_ray(ray, address)
        self.broken = False  # a stage died: new stages before the next message
        self._start()

    def _start(self) -> None:
        """New stages, chained; a failure on the way kills whatever was started and raises StageFailure."""
        try:
            self._start_stages()
        except StageFailure:
            raise
        except Exception as e:  # noqa: BLE001 - loading, placing or compiling failed: nothing half-built stays
            self._kill()
            dag, self.dag = getattr(self, "dag", None), None
            if dag is not None:
                threading.Thread(target=_quiet_teardown, args=(dag,), name="edgellm-teardown", daemon=True).start()
            raise StageFailure(f"the stages could not start: {_cause(e)}") from None

    def _start_stages(self) -> None:
        ray = self._ray
        from ray.dag import InputNode

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor = ray.remote(num_cpus=0, max_restarts=0)(_StageActor)
        n = len(self.splits)
        # the cluster's hosts take the stages in contiguous runs, the driver's host first
        here = ray.get_runtime_context().get_node_id()
        hosts = sorted((h["NodeID"] for h in ray.nodes() if h["Alive"]), key=lambda h: (h != here, h))
        self.actors = [actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(hosts[i * len(hosts) // n],
                                                                                        soft=False)).remote(
            self.model_path, a, b, i, n, self.n_threads, self.link_gbps, self.link_latency_us, self.kernel_path)
            for i, (a, b) in enumerate(self.splits)]  # fmt: skip
        try:
            self.infos = ray.get([a.info.remote() for a in self.actors], timeout=GET_TIMEOUT_S)
        except ray.exceptions.RayActorError as e:
            self._kill()
            raise StageFailure(f"a stage could not load the model: {_cause(e)}") from None
        self.dag = None
        several_hosts = len({info["node"] for info in self.infos}) > 1
        if self.requested_transport == "calls" or (several_hosts and self.requested_transport == "auto"):
            # stages on several hosts: plain actor calls (the compiled graph lost messages between hosts here)
            self.transport = "actor calls"
            return
        self.transport = "compiled graph"
        with InputNode() as inp:
            node = inp
            for a in self.actors:
                node = a.handle.bind(node)
        self.dag = node.experimental_compile(_max_inflight_executions=max(4, 2 * n),
                                             _buffer_size_bytes=self.message_bytes)  # fmt: skip
        # one message through the chain now: a chain that cannot pass messages fails at load, not on a request
        self.dag.execute({"op": "info"}).get(timeout=GET_TIMEOUT_S)

    def _kill(self) -> None:
        for a in getattr(self, "actors", []):
            try:
                self._ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []

    def run(self, messages: list[dict]) -> list[dict]:
        """Send the messages through every stage (all in flight at once) and return what the last stage answered."""
        ray = self._ray
        if self.broken:
            self._start()
            self.broken = False
        try:
            if self.dag is not None:
                refs = [self.dag.execute(m) for m in messages]
                out = [r.get(timeout=GET_TIMEOUT_S) for r in refs]
            else:  # each stage's calls run in the order sent: micro-batches still overlap
                refs = []
                for m in messages:
                    for a in self.actors:
                        m = a.handle.remote(m)
                    refs.append(m)
                out = ray.get(refs, timeout=GET_TIMEOUT_S)
        except (ray.exceptions.RayError, RuntimeError, TimeoutError) as e:
            text = str(e)  # Ray names the actor that died
            dead = [f"stage {i} (layers {a}-{b - 1})" for i, (actor, (a, b)) in enumerate(zip(self.actors, self.splits))
                    if actor._actor_id.hex() in text]  # fmt: skip
            what = f"{', '.join(dead)} died" if dead else f"the pipeline failed ({_cause(e)})"
            self._abandon()
            raise StageFailure(f"{what}; the request failed, and new stages will serve the next one") from None
        errors = [m["error"] for m in out if m.get("error")]
        if errors:
            raise StageFailure(errors[0])
        return out

    def _abandon(self) -> None:
        """After a failure: the stages are killed at once, the graph torn down in the background (Ray waits up to
        30 s for a dead actor there), and the next message starts new stages."""
        self.broken = True
        self._kill()
        dag, self.dag = self.dag, None
        if dag is not None:
            threading.Thread(target=_quiet_teardown, args=(dag,), name="edgellm-teardown", daemon=True).start()

    def close(self) -> None:
        """Stop the stages: the graph is torn down for at most TEARDOWN_S (a teardown can hang in Ray), then the
        actors are killed whatever state it reached."""
        dag, self.dag = getattr(self, "dag", None), None
        if dag is not None and not self.broken:
            t = threading.Thread(target=_quiet_teardown, args=(dag,), name="edgellm-teardown", daemon=True)
            t.start()
            t.join(TEARDOWN_S)
        self._kill()


def _init_ray(ray, address: str | None) -> None:
    """Connect to `address`, or start a local cluster, from a thread that lives as long as the process: Ray ties
    the cluster processes it starts to the starting thread (PR_SET_PDEATHSIG), so a cluster started by a passing
    thread (the server's loading thread) would die with it."""
    done: dict = {}
    ready = threading.Event()

    def keeper():
        try:
            # stages do not reserve CPUs: at one sequence a stage waits while the others run
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                     configure_logging=True, **({} if address else {"num_cpus": os.cpu_count() or 1}))  # fmt: skip
        except Exception as e:  # noqa: BLE001 - raised in the caller's thread
            done["error"] = e
        ready.set()
        threading.Event().wait()  # keep the cluster's parent thread alive

    threading.Thread(target=keeper, name="edgellm-ray", daemon=True).start()
    ready.wait()
    if "error" in done:
        raise UnsupportedError(f"could not start or reach the Ray cluster: {_cause(done['error'])}")


class _StageActor(Stage):
    """The stage as a Ray actor (compiled graphs call `handle`)."""

    def info(self) -> dict:
        import ray

        return {**super().info(), "node": ray.util.get_node_ip_address()}  # hosts may share a name


def _quiet_teardown(dag) -> None:
    """Tear a compiled graph down without Ray's tracebacks for the stages already gone."""
    log = logging.getLogger("ray.dag.compiled_dag_node")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        dag.teardown()
    except Exception:  # noqa: BLE001 - a dead stage: nothing left to tear down
        pass
    finally:
        log.setLevel(level)


def _cause(e: BaseException) -> str:
    """The first sentence of a Ray error's last line (they run to paragraphs)."""
    lines = str(e).strip().splitlines()
    return lines[-1].split(". ")[0] if lines else type(e).__name__


class PipelineModel:
    """Runs like a Transformer (forward, forward_batch, new_cache) with the layers in the pipeline's stages."""

    def __init__(self, model, model_path: str, n_stages: int, n_threads: int, link_gbps: float | None = None,
                 link_latency_us: float = 0.0, address: str | None = None, splits=None, transport: str = "auto"):
        self.transformer = model  # the driver's copy: config, store (the tokenizer and chat template live beside it)
        self.config = model.config
        self.store = model.store
        self.output_name = model.output_name
        self.n_threads = n_threads
        self.kernel_path = None
        self.splits = splits or self.plan_splits(model, n_stages)
        # a decode step's logits (two rows) fit the channels as first sized
        message = max(1 << 20, 2 * self.config.n_vocab * 4 + (64 << 10))
        self.pipeline = Pipeline(model_path, self.splits, n_threads, link_gbps, link_latency_us, address,
                                 message_bytes=message, transport=transport)  # fmt: skip
        self._lock = threading.Lock()
        self._freed: collections.deque[int] = collections.deque()
        self._caches: weakref.WeakSet[RemoteCache] = weakref.WeakSet()
        self._last_read = (0.0, 0.0)
        self.reset_stats()

    @staticmethod
    def plan_splits(model, n_stages: int) -> list[tuple[int, int]]:
        """The stages' layer runs for a Transformer `model` (split_layers over the file's tensor sizes)."""
        return split_layers(layer_read_bytes(model.store, model.config.n_layers, model.output_name), n_stages)

    def reset_stats(self) -> None:
        n = len(self.splits)
        self.stats = LinkStats(stage_s=[0.0] * n, hop_s=[0.0] * (n + 1), hop_bytes=[0.0] * (n - 1))

    @property
    def n_stages(self) -> int:
        return len(self.splits)

    def threads(self) -> int:
        return self.n_threads

    def compiled(self):
        return None  # no plan in the driver: the stages hold theirs

    def new_cache(self, n_ctx: int, cache_type: str = "f32") -> RemoteCache:
        if cache_type.lower() not in CACHE_TYPES:
            raise ConfigError(f"unknown KV cache type '{cache_type}'; choose one of: {', '.join(CACHE_TYPES)}")
        if len(self._caches) >= MAX_CACHES:
            raise ConfigError(f"a pipeline holds at most {MAX_CACHES} sequences' caches (--parallel, threads)")
        cache = RemoteCache(n_ctx, cache_type.lower())
        self._caches.add(cache)
        # once the driver drops it, the stages drop theirs (told with the next message)
        weakref.finalize(cache, self._freed.append, cache.id)
        return cache

    # -- running -------------------------------------------------------------------------------------
    def forward(self, tokens: np.ndarray, cache: RemoteCache, logits_rows: slice | None = slice(-1, None)) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        cache.reserve(len(tokens))
        self._check_tokens(tokens)
        rows = range(len(tokens))[logits_rows] if logits_rows is not None else range(0)
        (logits,) = self._run([[(tokens, cache)]], [np.asarray(rows, dtype=np.int32)])
        return logits

    def forward_batch(self, batch, want_logits) -> np.ndarray:
        """As Transformer.forward_batch; the sequences are cut into up to n_stages micro-batches that flow through
        the stages one behind the other."""
        for tokens, cache in batch:
            cache.reserve(len(tokens))
            self._check_tokens(np.asarray(tokens))
        groups = _micro_batches([len(t) for t, _ in batch], self.n_stages)
        seqs, rows = [], []
        for group in groups:
            seqs.append([batch[i] for i in group])
            ends = np.cumsum([len(batch[i][0]) for i in group]) - 1
            rows.append(np.asarray([e for e, i in zip(ends, group) if want_logits[i]], dtype=np.int32))
        results = self._run(seqs, rows)
        out = np.zeros((len(batch), self.config.n_vocab), dtype=np.float32)  # rows not wanted stay zero
        for group, logits in zip(groups, results):
            wanted = [i for i in group if want_logits[i]]
            out[wanted] = logits
        return out

    def _check_tokens(self, tokens: np.ndarray) -> None:
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.n_vocab):
            raise ValueError(f"token id out of range 0..{self.config.n_vocab - 1}")

    def _run(self, groups: list[list[tuple]], rows: list[np.ndarray]) -> list[np.ndarray]:
        """One message per group through the stages; the groups' caches advance by their tokens (under the lock, so
        a failure seen by another thread cannot come between)."""
        with self._lock:
            freed = [self._freed.popleft() for _ in range(len(self._freed))]
            messages = []
            for seqs, r in zip(groups, rows):
                caches = [c for _, c in seqs]
                messages.append({
                    "op": "forward", "seqs": [(c.id, c.n_past, len(t)) for t, c in seqs], "rows": r,
                    "n_ctx": caches[0].n_ctx, "cache_type": caches[0].cache_type, "free": freed,
                    "tokens": np.concatenate([np.asarray(t, dtype=np.int32) for t, _ in seqs]),
                })  # fmt: skip
                freed = []
            sent = time.time()
            try:
                answers = self.pipeline.run(messages)
            except StageFailure:
                if self.pipeline.broken:  # the next stages will hold nothing
                    for c in self._caches:
                        c.n_past = 0
                raise
            got = time.time()
            for seqs in groups:
                for tokens, cache in seqs:
                    cache.advance(len(tokens))
            self._account(answers, groups, sent, got)
            return [np.array(a["logits"]) for a in answers]  # a copy: not a view into the transport's buffers

    def _account(self, answers: list[dict], groups, sent: float, got: float) -> None:
        reads = [a["read"] for a in answers]
        self._last_read = (sum(w for r in reads for w, _ in r), sum(k for r in reads for _, k in r))
        n_tokens = [sum(len(t) for t, _ in g) for g in groups]
        decode = all(n == len(g) for n, g in zip(n_tokens, groups))  # one token per sequence
        if not decode:  # decode steps only: prompts would swamp the per-token figures
            return
        s = self.stats
        s.tokens += sum(n_tokens)
        s.wall_s += got - sent
        width = self.config.n_embd * np.dtype(HIDDEN_DTYPE).itemsize
        for a, n in zip(answers, n_tokens):
            trace = a["trace"]
            for i, (_, arrived, compute, left) in enumerate(trace):
                s.stage_s[i] += compute
                if i + 1 < len(trace):
                    s.hop_bytes[i] += n * width
            if len(answers) > 1:  # micro-batches wait for each other: their times are not the links'
                continue
            s.messages += 1
            s.hop_s[0] += trace[0][1] - sent
            for i, (_, arrived, compute, left) in enumerate(trace):
                s.hop_s[i + 1] += (trace[i + 1][1] if i + 1 < len(trace) else got) - left

    def bytes_read(self) -> float:
        return float(sum(self._last_read))

    def weight_bytes_read(self) -> float:
        return float(self._last_read[0])

    def storage_read(self) -> tuple[float, ...]:
        return (0.0,) * 6

    def describe(self) -> list[dict]:
        p = self.pipeline
        return [dict(info, layers=list(self.splits[i]), transport=p.transport) for i, info in enumerate(p.infos)]

    def close(self) -> None:
        self.pipeline.close()


def _micro_batches(counts: list[int], n: int) -> list[list[int]]:
    """Sequence indices cut into at most n contiguous groups of about equal tokens (each group a message)."""
    k = min(n, len(counts))
    if k <= 1:
        return [list(range(len(counts)))]
    total, groups, current, acc = sum(counts), [], [], 0
    for i, c in enumerate(counts):
        current.append(i)
        acc += c
        left = len(counts) - i - 1
        if (acc >= total * (len(groups) + 1) / k or left == k - len(groups) - 1) and len(groups) < k - 1 and left:
            groups.append(current)
            current = []
    groups.append(current)
    return groups
