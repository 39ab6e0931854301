"""Activation sparsity and the candidate head: quality, bytes and decode speed, every setting in one run.

    python benchmarks/sparsity.py --model smollm2-135m --levels 0.25,0.4,0.5,0.6 --head 64 --out results/smollm2

Steps (each skipped when its output exists in --out, so an interrupted run resumes):
  1. `edgellm sparsify -m MODEL -f groups_merged.txt --sparsity LEVELS --head K` (calibration text only);
  2. quality: mean KLD, same-top-token % and PPL of every setting against the dense model on wiki.test.raw,
     -c 512, the first --chunks windows (dense logits computed once per window), as `edgellm kld` computes them;
  3. speed: `edgellm bench -p 0 -n N -t 1,2 --sparsity 0,LEVELS --head off,K --json`, all settings side by side
     in one process, with the weight + KV bytes each decoded token read;
  4. results.json, a markdown table (stdout and table.md) and sparsity.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WIKI = ROOT / ".." / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
CALIB = ROOT / ".." / "shared" / "data" / "calibration" / "groups_merged.txt"


def edgellm(*args: str) -> str:
    cmd = [sys.executable, "-m", "edgellm.cli.main", *args]
    print("+ edgellm", " ".join(args), file=sys.stderr)
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout


def settings(levels: list[str], head: str | None) -> list[tuple[str | None, str | None]]:
    heads = [None] + ([head] if head else [])
    return [(s, h) for s in [None, *levels] for h in heads]


def quality(model: str, configs, chunks: int, threads: int) -> list[dict]:
    from edgellm import kernels
    from edgellm.api import LLM
    from edgellm.cli.common import text_tokens
    from edgellm.eval.kld import kl_divergence_many

    ref = LLM(model, n_ctx=512, n_threads=threads)
    models = [LLM(model, n_ctx=512, n_threads=threads, sparsity=s, head=h).model for s, h in configs]
    kernels.set_threads(threads)
    tok = ref.tokenizer
    tokens = text_tokens(str(WIKI), tok)
    results = kl_divergence_many(ref.model, models, tokens, 512, chunks, bos_id=tok.bos_id if tok.add_bos else None,
                                 on_chunk=lambda d, n, k: print(f"  window {d}/{n}", file=sys.stderr))  # fmt: skip
    return [{"sparsity": s, "head": h, **r.to_dict()} for (s, h), r in zip(configs, results)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--levels", default="0.25,0.4,0.5,0.6")
    ap.add_argument("--head", default="64", help="candidates for the head option ('' to skip it)")
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    levels = [v for v in a.levels.split(",") if v]
    configs = settings(levels, a.head or None)

    made = a.out / "sparsify.json"
    if not made.exists():
        args = ["sparsify", "-m", a.model, "-f", str(CALIB), "--sparsity", a.levels, "--json"]
        made.write_text(edgellm(*args, *(["--head", a.head] if a.head else [])))
    qual = a.out / "quality.json"
    if not qual.exists():
        qual.write_text(json.dumps(quality(a.model, configs, a.chunks, max(int(t) for t in a.threads.split(","))), indent=1))
    speed = a.out / "speed.json"
    if not speed.exists():
        speed.write_text(edgellm("bench", "-m", a.model, "-p", "0", "-n", str(a.n_gen), "-r", str(a.repetitions),
                                 "-t", a.threads, "--sparsity", ",".join(["0", *levels]),
                                 "--head", ",".join(["off", *([a.head] if a.head else [])]), "--json"))  # fmt: skip
    q = json.loads(qual.read_text())
    sp = json.loads(speed.read_text())
    rows = table(q, sp, a.threads)
    (a.out / "results.json").write_text(json.dumps({"quality": q, "speed": sp, "sparsify": json.loads(made.read_text())}, indent=1))
    (a.out / "table.md").write_text(rows)
    print(rows)
    plot(q, sp, a.out / "sparsity.png", a.model)


def _key(s, h):
    return (None if s in (None, "0") else s, h)


def table(q: list[dict], sp: list[dict], threads: str) -> str:
    speed = {(_key(r["sparsity"], r["head"]), r["threads"]): r for r in sp}
    ts = [int(t) for t in threads.split(",")]
    dense = {t: speed[((None, None), t)]["tps"] for t in ts}
    head = "| sparsity | head | PPL | ΔPPL | mean KLD | same top % | MB/token | " + " | ".join(f"tg t={t} (×dense)" for t in ts) + " |"
    lines = [head, "|" + "---|" * (6 + len(ts) + 1)]
    ppl0 = next(r["ppl"] for r in q if r["sparsity"] is None and r["head"] is None)
    for r in q:
        k = _key(r["sparsity"], r["head"])
        cells = [speed.get((k, t)) for t in ts]
        mb = cells[0]["bytes_read_per_token"] / 1e6 if cells[0] and cells[0]["bytes_read_per_token"] else float("nan")
        tg = " | ".join(f"{c['tps']:.1f} ({c['tps'] / dense[t]:.2f}×)" if c else "-" for c, t in zip(cells, ts))
        lines.append(f"| {r['sparsity'] or 0} | {r['head'] or 'full'} | {r['ppl']:.4f} | {100 * (r['ppl'] / ppl0 - 1):+.2f} % | "
                     f"{r['kld_mean']:.4f} | {r['same_top_pct']:.2f} | {mb:.1f} | {tg} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(q: list[dict], sp: list[dict], path: Path, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ppl0 = next(r["ppl"] for r in q if r["sparsity"] is None and r["head"] is None)
    for head in sorted({r["head"] for r in q}, key=lambda h: h or ""):
        rows = [r for r in q if r["head"] == head]
        x = [float(r["sparsity"] or 0) for r in rows]
        ax1.plot(x, [100 * (r["ppl"] / ppl0 - 1) for r in rows], "o-", label=f"head {head or 'full'}")
        for t in sorted({r["threads"] for r in sp}):
            pts = [(float(r["sparsity"] or 0), r["tps"]) for r in sp if r["head"] == head and r["threads"] == t]
            base = next(r["tps"] for r in sp if _key(r["sparsity"], r["head"]) == (None, None) and r["threads"] == t)
            ax2.plot([p[0] for p in pts], [p[1] / base for p in pts], "o-", label=f"head {head or 'full'}, {t} thr")
    ax1.axhline(8, color="grey", ls=":", label="+8 %")
    ax1.set(xlabel="model-wide activation sparsity", ylabel="perplexity vs dense (%)", title=f"{model}: quality")
    ax2.axhline(1, color="grey", ls=":")
    ax2.set(xlabel="model-wide activation sparsity", ylabel="decode speed / dense", title=f"{model}: decode")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
