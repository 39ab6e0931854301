"""`edgellm quantize`, `imatrix` and `kld` end to end on tiny models written by the tests."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from fixtures.tiny import build_tiny_gguf

from edgellm import kernels
from edgellm.api import LLM
from edgellm.cli.main import main
from edgellm.formats.gguf import GGUFFile
from edgellm.formats.quants import GGMLType as T
from edgellm.quant.imatrix import ImportanceMatrix
from edgellm.quant.mixes import MIXES, choose_types, get_mix

pytestmark = pytest.mark.skipif(kernels._C is None, reason="C extension not built")
TEXT = "the quick brown fox jumps over the lazy dog. " * 60


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory) -> Path:
    """Rows of 256 (k-quants fit) and 320 (they do not: the 32-block fallbacks run)."""
    path = tmp_path_factory.mktemp("q") / "wide.gguf"
    return build_tiny_gguf(path, n_embd=256, n_ff=320, n_head=4, n_head_kv=2, embd_std=0.1)  # soft distributions


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("txt") / "calib.txt"
    p.write_text(TEXT)
    return p


@pytest.fixture(scope="module")
def imatrix(wide_model, text_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("im") / "imatrix.gguf"
    assert main(["imatrix", "-m", str(wide_model), "-f", str(text_file), "-c", "64", "--chunks", "4", "--gptq",
                 "--sensitivity", "-o", str(out)]) == 0  # fmt: skip
    return out


def logits(path: Path, tokens=(5, 9, 40, 77, 3)) -> np.ndarray:
    llm = LLM(str(path), n_ctx=32)
    from edgellm.runtime.kv_cache import KVCache

    return llm.model.forward(np.array(tokens), KVCache(llm.model.config, 32), slice(None))


@pytest.mark.parametrize("mix", [m for m in MIXES if m != "F16"])
def test_every_type_writes_a_loadable_file_close_to_the_source(mix, wide_model, tmp_path):
    out = tmp_path / f"{mix}.gguf"
    assert main(["quantize", str(wide_model), str(out), "--type", mix]) == 0
    with GGUFFile(out) as f:
        assert "general.quantized_by" not in f.metadata  # a few bytes; files must not outgrow llama.cpp's
        assert (f.metadata.get("general.file_type") is not None) == (MIXES[mix].file_type is not None)
        types = {t.type for t in f.tensors.values()}
    assert MIXES[mix].default in types or MIXES[mix].default in (T.Q2_K, T.Q3_K)  # k-quants may all fall back
    ref, got = logits(wide_model), logits(out)
    cos = np.sum(ref * got) / np.linalg.norm(ref) / np.linalg.norm(got)
    floor = 0.5 if mix == "Q2_NL" else 0.8  # 2.25 bits on random Gaussian weights keeps little
    assert cos > floor, f"{mix}: logits cosine {cos:.3f}"


def test_mix_follows_llama_cpp_rules_and_fallbacks():
    # SmolLM2-135M's shapes: every row is 576 wide except ffn_down's 1536
    tensors = [("token_embd.weight", (49152, 576))]
    for i in range(30):
        for r, shape in [("attn_q", (576, 576)), ("attn_k", (192, 576)), ("attn_v", (192, 576)),
                         ("attn_output", (576, 576)), ("ffn_gate", (1536, 576)), ("ffn_up", (1536, 576)),
                         ("ffn_down", (576, 1536))]:  # fmt: skip
            tensors.append((f"blk.{i}.{r}.weight", shape))
        tensors.append((f"blk.{i}.attn_norm.weight", (576,)))
    counts = lambda types: {t.name: sum(v == t for v in types.values()) for t in set(types.values()) if t}  # noqa: E731
    # what llama-quantize (2026-10-01) writes for this model: 166 Q5_0 + 15 Q8_0 + 14 Q6_K + 16 Q4_K (Q4_K_M),
    # 180 Q4_0 + 30 Q3_K + Q8_0 embedding (Q2_K)
    assert counts(choose_types(tensors, get_mix("Q4_K_M"), 9, 3)) == {"Q5_0": 166, "Q8_0": 15, "Q6_K": 14, "Q4_K": 16}
    assert counts(choose_types(tensors, get_mix("Q2_K"), 9, 3)) == {"Q4_0": 180, "Q3_K": 30, "Q8_0": 1}
    assert choose_types(tensors, get_mix("Q4_K_M"), 9, 3)["blk.0.attn_norm.weight"] is None


def test_dry_run_prints_the_plan_and_writes_nothing(wide_model, tmp_path, capsys):
    out = tmp_path / "x.gguf"
    assert main(["quantize", str(wide_model), str(out), "--type", "Q4_K_M", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "blk.0.ffn_down.weight" in text and "bits per weight" in text
    assert not out.exists()


def test_existing_output_needs_force(wide_model, tmp_path, capsys):
    out = tmp_path / "x.gguf"
    out.write_bytes(b"keep me")
    assert main(["quantize", str(wide_model), str(out), "--type", "Q8_0"]) == 1
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main(["quantize", str(wide_model), str(out), "--type", "Q8_0", "--force"]) == 0
    assert GGUFFile(out).tensors


def test_bad_input_is_a_one_line_error(wide_model, tmp_path, capsys):
    assert main(["quantize", str(wide_model), str(tmp_path / "o.gguf"), "--type", "Q7_X"]) == 1
    assert "unknown quantization type 'Q7_X'" in capsys.readouterr().err
    assert main(["quantize", str(wide_model), str(wide_model), "--type", "Q8_0", "--force"]) == 1
    assert "OUTPUT is the INPUT" in capsys.readouterr().err
    assert main(["quantize", str(tmp_path / "missing.gguf"), str(tmp_path / "o.gguf"), "--type", "Q8_0"]) == 1
    assert "error" in capsys.readouterr().err
    assert main(["quantize", str(wide_model), str(tmp_path / "o.gguf"), "--bpw", "40"]) == 1
    assert "out of reach" in capsys.readouterr().err


def test_odd_row_length_falls_back_or_says_why(tmp_path, capsys):
    odd = build_tiny_gguf(tmp_path / "odd.gguf", n_embd=64, n_ff=96, n_head=4, n_head_kv=2)
    out = tmp_path / "q.gguf"
    assert main(["quantize", str(odd), str(out), "--type", "Q4_K_M"]) == 0  # 64/96-wide rows: 32-block fallbacks
    assert {t.type for t in GGUFFile(out).tensors.values()} <= {T.Q5_0, T.Q8_0, T.Q6_K, T.Q5_1, T.Q4_K, T.F32, T.F16}
    assert main(["quantize", str(odd), str(out), "--type", "Q8_0", "--force", "--token-embedding-type", "Q4_K"]) == 1
    assert "tensor 'token_embd.weight' has rows of 64 weights, not a multiple of Q4_K's block of 256" in capsys.readouterr().err


def test_imatrix_file_round_trips_in_llama_cpp_layout(imatrix, wide_model):
    im = ImportanceMatrix.load(imatrix)
    with GGUFFile(imatrix) as f:
        assert f.metadata["general.type"] == "imatrix"
        assert "blk.0.attn_q.weight.in_sum2" in f.tensors and "blk.0.attn_q.weight.counts" in f.tensors
    imp = im.importance("blk.0.ffn_down.weight", 320)
    assert imp.shape == (320,) and np.all(imp > 0)
    # q, k and v see the same input: one second-moment matrix, shared
    assert im.aliases["blk.0.attn_k.weight"] == "blk.0.attn_q.weight"
    h = im.hessian("blk.0.attn_v.weight", 256)
    assert h.shape == (256, 256) and np.allclose(h, h.T)
    assert set(im.gains) >= {"blk.1.ffn_up.weight", "token_embd.weight"}
    assert all(g >= 0 for g in im.gains.values())


def test_bpw_lands_on_the_request_and_reports_where_bits_went(wide_model, imatrix, tmp_path, capsys):
    for target in (3.0, 4.5):
        out = tmp_path / f"b{target}.gguf"
        assert main(["quantize", str(wide_model), str(out), "--bpw", str(target), "--imatrix", str(imatrix),
                     "--json"]) == 0  # fmt: skip
        plan = json.loads(capsys.readouterr().out)
        assert abs(plan["bits_per_weight"] - target) <= 0.05
        assert sum(v["bytes"] for v in plan["types"].values()) == plan["n_bytes"]
        assert len(plan["types"]) >= 2, "a budget between the types' sizes needs a mix"
        assert logits(out).shape == (5, len(GGUFFile(out).metadata["tokenizer.ggml.tokens"]))


def test_kld_of_a_model_with_itself_is_zero_and_grows_with_fewer_bits(wide_model, text_file, tmp_path, capsys):
    q8, q2 = tmp_path / "q8.gguf", tmp_path / "q2.gguf"
    main(["quantize", str(wide_model), str(q8), "--type", "Q8_0"])
    main(["quantize", str(wide_model), str(q2), "--type", "Q2_NL"])
    capsys.readouterr()
    results = {}
    for m in (wide_model, q8, q2):
        assert main(["kld", "--ref", str(wide_model), "-m", str(m), "-f", str(text_file), "-c", "64", "--chunks",
                     "3", "--json"]) == 0  # fmt: skip
        results[m] = json.loads(capsys.readouterr().out)
    assert set(results[q8]) >= {"kld_mean", "kld_stderr", "same_top_pct", "ppl", "ppl_ref", "n_chunks"}
    assert results[wide_model]["kld_mean"] == pytest.approx(0.0, abs=1e-9)
    assert results[wide_model]["same_top_pct"] == 100.0
    assert 0 < results[q8]["kld_mean"] < results[q2]["kld_mean"]
    assert results[q8]["ppl_ref"] == pytest.approx(results[wide_model]["ppl"])


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray], bf16: set[str]) -> None:
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        if name in bf16:
            data = (np.ascontiguousarray(a, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
            dtype = "BF16"
        else:
            data, dtype = np.ascontiguousarray(a, "<f4").tobytes(), "F32"
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def test_hugging_face_directory_converts_like_the_gguf_it_came_from(tmp_path):
    """A tiny Llama written as HF safetensors (q/k rows in HF's order) quantizes to a GGUF whose logits match the
    same weights written directly as GGUF."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    src = build_tiny_gguf(tmp_path / "src.gguf", n_embd=64, n_ff=96, n_head=4, n_head_kv=2)
    f = GGUFFile(src)
    from edgellm.quant.source import GGUFSource

    weights = {n: GGUFSource(src).weights(n) for n in f.tensors}
    n_head, n_kv = 4, 2

    def unpermute(w, heads):  # inverse of llama.cpp's converter permutation
        return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    hf = {"model.embed_tokens.weight": weights["token_embd.weight"], "model.norm.weight": weights["output_norm.weight"]}
    for i in range(2):
        b = f"model.layers.{i}."
        hf[b + "self_attn.q_proj.weight"] = unpermute(weights[f"blk.{i}.attn_q.weight"], n_head)
        hf[b + "self_attn.k_proj.weight"] = unpermute(weights[f"blk.{i}.attn_k.weight"], n_kv)
        for hf_name, gg in [("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"),
                            ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"), ("input_layernorm", "attn_norm"),
                            ("post_attention_layernorm", "ffn_norm")]:  # fmt: skip
            hf[b + hf_name + ".weight"] = weights[f"blk.{i}.{gg}.weight"]
    d = tmp_path / "hf"
    d.mkdir()
    _write_safetensors(d / "model.safetensors", hf, bf16=set())
    (d / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": 2, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 256, "tie_word_embeddings": True}))  # fmt: skip
    tokens = f.metadata["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ")) for m in f.metadata["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.save(str(d / "tokenizer.json"))
    out = tmp_path / "from-hf.gguf"
    assert main(["quantize", str(d), str(out), "--type", "F16"]) == 0
    ref, got = logits(src), logits(out)
    assert np.max(np.abs(ref - got)) < 2e-2 * np.max(np.abs(ref))
    assert LLM(str(out)).tokenizer.encode("the fox") == LLM(str(src)).tokenizer.encode("the fox")


def test_hugging_face_errors_name_the_problem(tmp_path, capsys):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    assert main(["quantize", str(d), str(tmp_path / "o.gguf"), "--type", "Q8_0"]) == 1
    assert "model_type 'mamba' is not supported" in capsys.readouterr().err
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": 4}))
    assert main(["quantize", str(d), str(tmp_path / "o.gguf"), "--type", "Q8_0"]) == 1
    assert "field 'num_hidden_layers' is missing" in capsys.readouterr().err
