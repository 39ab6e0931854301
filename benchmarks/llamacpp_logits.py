"""llama.cpp as the oracle at logit level: writes the fixtures tests/model/test_llamacpp_logits.py checks.

For every tiny case in tests/fixtures/oracle_cases.py (one per architecture and RoPE variant) this builds the
GGUF with edgellm's writer (and, as `hf-NAME`, the file edgellm converts from the case written back as a
Hugging Face directory), runs llama.cpp on it (llama-cpp-python in a separate environment, never an edgellm
dependency) and stores, per prompt position, the full logits (tiny vocabularies). For the packaged real models
(`--real`) it stores the top-20 logits and the log-sum-exp per position for a few prompts.

llama.cpp's own spread sets the tolerance: the reference is one prefill batch with an F32 KV cache on 1
thread; the same prompt is also run on 2 threads, token by token (decode kernels), and with llama.cpp's
default F16 cache. The largest logit difference among those runs, per case, is recorded as `spread`: a result
that differs from the reference by no more than llama.cpp differs from itself is as good as llama.cpp's.

    python benchmarks/llamacpp_logits.py --llama-python VENV/bin/python [--cases llama,phi3] [--real]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "llamacpp_logits"
REAL_PROMPTS = [
    "The capital of France is Paris, and the capital of Germany is Berlin. Both cities are known for their museums, "
    "their long history and the rivers that run through them, the Seine and the Spree.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "for i in range(10):\n    print(i, fibonacci(i))\n",
    "In 1905, Einstein published four papers that changed physics. The first explained the photoelectric effect, "
    "the second Brownian motion, the third special relativity, and the fourth the equivalence of mass and energy.",
]
REAL_POSITIONS = 32
TOP = 20
# tokenized by llama.cpp for every tiny case (the Hugging Face conversions' tokenizers are checked with it)
TOKENIZER_TEXT = "the fox ate the sandwich in Paris, then\n  sat   on a mat. Über 12 ünïcödé tokens <|im_end|> <eos>"


# -- worker: runs under the llama-cpp-python interpreter ---------------------------------------------------
def worker(jobs: list[dict]) -> dict:
    import llama_cpp

    def run(path, tokens, n_ctx, threads, f32_cache=True, one_by_one=False):
        kv = dict(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32) if f32_cache else {}
        llm = llama_cpp.Llama(path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                              n_threads_batch=threads, logits_all=True, flash_attn=False, verbose=False, **kv)  # fmt: skip
        llm.reset()
        if one_by_one:
            for t in tokens:
                llm.eval([t])
        else:
            llm.eval(tokens)
        out = np.array(llm.scores[: len(tokens)], dtype=np.float32)
        del llm
        return out

    results = {}
    for job in jobs:
        args = (job["path"], job["tokens"], job["n_ctx"])
        ref = run(*args, threads=1)
        variants = {"2 threads": run(*args, threads=2), "token by token": run(*args, threads=1, one_by_one=True),
                    "F16 cache": run(*args, threads=1, f32_cache=False)}  # fmt: skip
        np.save(job["out"], ref)
        for i, v in enumerate(variants.values()):
            np.save(f"{job['out']}.{i}.npy", v)
        vocab = llama_cpp.Llama(job["path"], vocab_only=True, verbose=False)
        text_ids = vocab.tokenize(TOKENIZER_TEXT.encode(), add_bos=True, special=True)
        results[job["name"]] = {"variants": list(variants), "text_ids": text_ids}
    return results


def top_and_lse(logits: np.ndarray, top: np.ndarray | None = None):
    """Per position: the logits at `top` (default: the 20 largest) and the log-sum-exp."""
    logits = logits.astype(np.float64)
    top = np.argsort(-logits, axis=1)[:, :TOP] if top is None else top
    mx = logits.max(axis=1, keepdims=True)
    return top, np.take_along_axis(logits, top, axis=1), mx[:, 0] + np.log(np.exp(logits - mx).sum(axis=1))


def spread_of(job: dict, names: list[str], top_only: bool) -> dict[str, float]:
    """Largest difference of llama.cpp's other runs from its reference: over all logits, or (`top_only`) over
    the reference's top 20 per position and the log-sum-exp."""
    ref = np.load(job["out"])
    out = {}
    for i, name in enumerate(names):
        other = np.load(f"{job['out']}.{i}.npy")
        if top_only:
            top, ref_top, ref_lse = top_and_lse(ref)
            _, other_top, other_lse = top_and_lse(other, top)
            out[name] = float(max(np.abs(other_top - ref_top).max(), np.abs(other_lse - ref_lse).max()))
        else:
            out[name] = float(np.abs(other - ref).max())
    return out


def tokenize_real(paths: dict[str, str]) -> dict:
    """Prompt token ids as llama.cpp tokenizes them (BOS per vocabulary)."""
    import llama_cpp

    out = {}
    for name, path in paths.items():
        llm = llama_cpp.Llama(path, n_ctx=256, vocab_only=True, verbose=False)
        out[name] = [llm.tokenize(p.encode(), add_bos=True, special=True) for p in REAL_PROMPTS]
    return out


# -- driver: runs under edgellm's interpreter ------------------------------------------------------------
def call_worker(python: str, function: str, payload) -> dict:
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import llamacpp_logits as m; " \
           f"print(json.dumps(m.{function}(json.loads(sys.stdin.read()))))"  # fmt: skip
    done = subprocess.run([python, "-c", code], input=json.dumps(payload), capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"llama.cpp worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_cases(python: str, names: list[str], work: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from edgellm.formats.gguf import GGUFFile
    from fixtures import oracle_cases

    jobs = []
    for name in names:
        build = oracle_cases.build_hf_case if name.startswith("hf-") else oracle_cases.build_case
        path = build(name.removeprefix("hf-"), work / f"{name}.gguf")
        n_vocab = GGUFFile(path).tensors["token_embd.weight"].shape[0]
        jobs.append(dict(name=name, path=str(path), tokens=oracle_cases.prompt(name, n_vocab), n_ctx=oracle_cases.N_CTX,
                         out=str(work / f"{name}.npy")))  # fmt: skip
    variants = call_worker(python, "worker", jobs)
    OUT.mkdir(parents=True, exist_ok=True)
    for job in jobs:
        logits = np.load(job["out"])
        spread = spread_of(job, variants[job["name"]]["variants"], top_only=False)
        np.savez_compressed(OUT / f"{job['name']}.npz", sha256=sha256(Path(job["path"])), tokens=np.array(job["tokens"]),
                            logits=logits, spread=max(spread.values()), spread_by=json.dumps(spread),
                            text=TOKENIZER_TEXT, text_ids=np.array(variants[job["name"]]["text_ids"]))  # fmt: skip
        print(f"{job['name']:<16} spread {max(spread.values()):.2e}  ({', '.join(f'{k} {v:.1e}' for k, v in spread.items())})")


def real_cases(python: str, work: Path) -> None:
    from edgellm import hub

    paths = {name: str(hub.resolve(name)) for name in ("smollm2-135m", "gemma3-270m")}
    prompts = call_worker(python, "tokenize_real", paths)
    jobs = [dict(name=f"{name}-{i}", path=path, tokens=ids[: REAL_POSITIONS], n_ctx=64, out=str(work / f"{name}-{i}.npy"))
            for name, path in paths.items() for i, ids in enumerate(prompts[name])]  # fmt: skip
    variants = call_worker(python, "worker", jobs)
    spreads = {job["name"]: spread_of(job, variants[job["name"]]["variants"], top_only=True) for job in jobs}
    for name, path in paths.items():
        rows = {"tokens": [], "top_ids": [], "top_logits": [], "lse": [], "spread": []}
        for i in range(len(REAL_PROMPTS)):
            job = f"{name}-{i}"
            top, top_logits, lse = top_and_lse(np.load(work / f"{job}.npy"))
            rows["tokens"].append(prompts[name][i][:REAL_POSITIONS])
            rows["top_ids"].append(top)
            rows["top_logits"].append(top_logits.astype(np.float32))
            rows["lse"].append(lse.astype(np.float32))
            rows["spread"].append(spreads[job])
            print(f"{job:<16} spread " + ", ".join(f"{k} {v:.2e}" for k, v in spreads[job].items()))
        np.savez_compressed(OUT / f"{name}.npz", sha256=sha256(Path(path)), tokens=np.array(rows["tokens"]),
                            top_ids=np.array(rows["top_ids"]), top_logits=np.array(rows["top_logits"]),
                            lse=np.array(rows["lse"]), spread=max(max(s.values()) for s in rows["spread"]),
                            spread_by=json.dumps(rows["spread"]))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-python", required=True, help="interpreter with llama-cpp-python installed")
    ap.add_argument("--cases", help="comma-separated tiny cases (default: all)")
    ap.add_argument("--real", action="store_true", help="also the packaged real models (top-20 per position)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures.oracle_cases import CASES, HF_CASES

    names = args.cases.split(",") if args.cases else [*CASES, *(f"hf-{name}" for name in HF_CASES)]
    with tempfile.TemporaryDirectory() as tmp:
        tiny_cases(args.llama_python, names, Path(tmp))
        if args.real:
            real_cases(args.llama_python, Path(tmp))


if __name__ == "__main__":
    main()
