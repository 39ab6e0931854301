"""KL divergence against file size: edgellm's quantizer against llama.cpp's on the same reference, in one run.

    python benchmarks/quant_kld.py --model smollm2-135m --chunks 150 --llama-python VENV/bin/python --out results/

Steps (each skipped when its output file exists in --out, so an interrupted run resumes):
  1. the reference: the packaged model dequantized to F16 (`edgellm quantize MODEL ref-f16.gguf --type F16`);
  2. an importance matrix from the calibration text, with GPTQ second moments and measured sensitivity;
  3. llama.cpp's files: each standard type from that F16, without and with the same importance matrix
     (llama-cpp-python's llama_model_quantize, run by --llama-python; skipped without it);
  4. edgellm's files: the standard types and bits-per-weight budgets, all with the importance matrix; the
     standard ones loaded by llama.cpp, which generates a few tokens from each (llamacpp_loads.json);
  5. mean KLD, same-top-token % and PPL of every file against the reference on wiki.test.raw, -c 512, the
     first --chunks windows (the reference's logits computed once per window for all files);
  6. results.json, a markdown table and kld_vs_mb.png (KLD against file size, log scale).
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
LLAMA_TYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K"]


def edgellm(*args: str) -> None:
    cmd = [sys.executable, "-m", "edgellm.cli.main", *args]
    print("+", " ".join(cmd[3:]), file=sys.stderr)
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--chunks", type=int, default=150)
    ap.add_argument("--calib-chunks", type=int, default=50)
    ap.add_argument("--llama-python", help="interpreter with llama-cpp-python (llama.cpp's quantizer)")
    ap.add_argument("--types", default=",".join(LLAMA_TYPES), help="standard types to make with both tools")
    ap.add_argument("--bpw", default="2.75,3.0,3.45,4.0,4.5,5.0,5.5,6.2", help="edgellm bits-per-weight points")
    ap.add_argument("--bpw-extra", default="", help="extra quantize arguments for the --bpw points")
    ap.add_argument("--llama-imatrix", choices=["both", "no", "yes"], default="both",
                    help="llama.cpp files without and/or with the importance matrix")
    ap.add_argument("-t", "--threads", type=int, default=2)
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t = ["-t", str(args.threads)]

    ref = out / "ref-f16.gguf"
    if not ref.exists():
        edgellm("quantize", args.model, str(ref), "--type", "F16", *t)
    imatrix = out / "imatrix.gguf"
    if not imatrix.exists():
        edgellm("imatrix", "-m", str(ref), "-f", str(CALIB), "--chunks", str(args.calib_chunks), "--gptq",
                "--sensitivity", "-o", str(imatrix), *t)  # fmt: skip

    files: list[tuple[str, str, Path]] = []  # (tool, label, path)
    types = [x for x in args.types.split(",") if x]
    if args.llama_python:
        npz = out / "imatrix.npz"
        if not npz.exists():
            from edgellm.quant.imatrix import ImportanceMatrix

            im = ImportanceMatrix.load(imatrix)
            np.savez(npz, **{k: im.importance(k, len(v[0])) for k, v in im.entries.items()})
        script = str(ROOT / "benchmarks" / "llamacpp_quantize.py")
        for typ in types:
            for with_im in {"both": (False, True), "no": (False,), "yes": (True,)}[args.llama_imatrix]:
                path = out / f"llamacpp-{typ}{'-imatrix' if with_im else ''}.gguf"
                if not path.exists():
                    extra = ["--imatrix", str(npz)] if with_im else []
                    subprocess.run([args.llama_python, script, str(ref), str(path), typ, *extra], check=True,
                                   capture_output=True)  # fmt: skip
                files.append(("llama.cpp", f"{typ}{' + imatrix' if with_im else ''}", path))
    for typ in types:
        path = out / f"edgellm-{typ}.gguf"
        if not path.exists():
            edgellm("quantize", str(ref), str(path), "--type", typ, "--imatrix", str(imatrix), *t)
        files.append(("edgellm", f"{typ} + imatrix, GPTQ", path))
    checks_path = out / "llamacpp_loads.json"
    if args.llama_python and not checks_path.exists():
        # every standard type edgellm writes must load and generate in llama.cpp
        checks = {}
        for typ in types:
            run = subprocess.run([args.llama_python, str(ROOT / "benchmarks" / "llamacpp_quantize.py"),
                                  str(out / f"edgellm-{typ}.gguf"), "--check"], capture_output=True, text=True)  # fmt: skip
            checks[typ] = json.loads(run.stdout)["text"] if run.returncode == 0 else f"FAILED: {run.stderr[-300:]}"
        checks_path.write_text(json.dumps(checks, indent=1))
    for bpw in [x for x in args.bpw.split(",") if x]:
        path = out / f"edgellm-bpw{bpw}.gguf"
        if not path.exists():
            edgellm("quantize", str(ref), str(path), "--bpw", bpw, "--imatrix", str(imatrix), *args.bpw_extra.split(), *t)
        files.append(("edgellm", f"--bpw {bpw}", path))

    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    todo = [f for f in files if str(f[2].name) not in results or results[f[2].name]["n_chunks"] != args.chunks]
    if todo:
        from edgellm import kernels
        from edgellm.api import LLM
        from edgellm.eval.kld import kl_divergence_many

        kernels.set_threads(args.threads)
        ref_llm = LLM(str(ref), n_ctx=512)
        models = [LLM(str(p), n_ctx=512).model for _, _, p in todo]
        tok = ref_llm.tokenizer
        tokens = np.asarray(tok.encode(WIKI.read_text(encoding="utf-8"), add_special=True, parse_special=False))
        done = kl_divergence_many(ref_llm.model, models, tokens, 512, args.chunks, tok.bos_id if tok.add_bos else None,
                                  lambda c, n, k: print(f"chunk {c}/{n}", file=sys.stderr, flush=True))  # fmt: skip
        for (tool, label, path), r in zip(todo, done):
            results[path.name] = {"tool": tool, "label": label, "file": path.name, "file_mb": path.stat().st_size / 1e6,
                                  "blocks_bpw": blocks_bpw(path), **r.to_dict()}  # fmt: skip
        results_path.write_text(json.dumps(results, indent=1))
    rows = sorted(results.values(), key=lambda r: r["file_mb"])
    print("| tool | type | file MB | bpw of blocks | mean KLD | same top % | PPL |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tool']} | {r['label']} | {r['file_mb']:.1f} | {r.get('blocks_bpw') or blocks_bpw(out / r['file']):.3f} | "
              f"{r['kld_mean']:.4f} ± {r['kld_stderr']:.4f} | {r['same_top_pct']:.2f} | {r['ppl']:.2f} |")  # fmt: skip
    plot(rows, out / "kld_vs_mb.png", args.model, args.chunks)


def blocks_bpw(path: Path) -> float:
    """Bits per weight of the transformer blocks alone (blk.*), from the file's tensor table."""
    from edgellm.formats.gguf import GGUFFile

    with GGUFFile(path) as f:
        blk = [t for t in f.tensors.values() if t.name.startswith("blk.")]
        return 8 * sum(t.n_bytes for t in blk) / sum(t.n_elements for t in blk)


def plot(rows: list[dict], path: Path, model: str, chunks: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    def group(r: dict) -> str:
        if r["tool"] == "llama.cpp":
            return "llama.cpp + imatrix" if "imatrix" in r["label"] else "llama.cpp"
        return "edgellm --bpw" if r["label"].startswith("--bpw") else "edgellm, llama.cpp types"

    styles = {"llama.cpp": ("tab:gray", "s", "none"), "llama.cpp + imatrix": ("k", "D", "none"),
              "edgellm, llama.cpp types": ("tab:blue", "o", "none"), "edgellm --bpw": ("tab:blue", "o", "-")}  # fmt: skip
    for key, (color, marker, line) in styles.items():
        sel = [r for r in rows if group(r) == key]
        if not sel:
            continue
        ax.plot([r["file_mb"] for r in sel], [r["kld_mean"] for r in sel], marker=marker, color=color,
                linestyle=line, label=key, markerfacecolor="white" if key == "edgellm, llama.cpp types" else color)  # fmt: skip
        for r in sel:
            text = r["label"].replace("--bpw ", "") + (" bpw" if r["label"].startswith("--bpw") else "")
            ax.annotate(text.split(" + ")[0] if r["tool"] == "llama.cpp" or "types" in key else text,
                        (r["file_mb"], r["kld_mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("mean KL divergence from the F16 reference")
    ax.set_title(f"{model}: wiki.test.raw, 512-token windows, {chunks} chunks")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
