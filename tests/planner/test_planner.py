"""Device profiles, model descriptions, the analytic model and the planner commands."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgellm.cli.main import main
from edgellm.errors import ConfigError
from edgellm.formats.quants import GGMLType, get_format
from edgellm.planner.calibrate import SYN, synthetic_weight_bytes
from edgellm.planner.device import device_names, load_device
from edgellm.planner.estimate import (
    ENGINE_KEYS,
    KV_BYTES,
    Scenario,
    decode_ops,
    estimate,
    prefill_ops,
)
from edgellm.planner.model import CATALOG, load_model, typed

SURVEY = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "edge-devices.md"


def test_every_device_profile_loads_and_keeps_its_sources():
    names = device_names()
    assert len(names) >= 25
    for name in names:
        d = load_device(name)
        for fig in (d.bandwidth_gbps, d.capacity_gb, d.storage_read_gbps, d.cores):
            if fig.known:
                assert fig.tag in {"V", "M", "S", "D", "E"}, (name, fig)
                assert fig.source, (name, fig)
                assert fig.source in d.sources, (name, fig)


@pytest.mark.skipif(not SURVEY.exists(), reason="survey not present")
def test_bandwidths_are_the_survey_figures():
    text = SURVEY.read_text(encoding="utf-8")
    for name, value in [("raspberry-pi-5", "17.1"), ("snapdragon-8-gen-3", "76.8"), ("apple-m4", "120"),
                        ("jetson-agx-orin-64gb", "204.8"), ("tesla-hw3", "68.3")]:
        assert f"{load_device(name).bandwidth_gbps.value:g}" == value
        assert value in text


def test_unknown_figures_stay_unknown():
    d = load_device("tensor-g4")
    assert d.bandwidth_gbps.value is None
    with pytest.raises(ConfigError, match="no published memory bandwidth"):
        estimate(load_model("llama-3.2-1b"), d, Scenario())


def write_profile(tmp_path, doc, name="dev.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


MINIMAL = {"name": "toy", "class": "board", "memory": {"bandwidth_gbps": 10.0, "capacity_gb": 1.0},
           "storage": {"read_gbps": 1.0}, "units": [{"name": "cpu", "int8_tops": 1.0}]}


def test_unknown_capacity_means_fit_unknown(tmp_path):
    doc = json.loads(json.dumps(MINIMAL))
    doc["memory"]["capacity_gb"] = None
    est = estimate(typed(CATALOG["llama-3.2-1b"], "Q8_0"), load_device(write_profile(tmp_path, doc)), Scenario())
    assert est.fits is None and any("capacity" in n for n in est.notes)


def test_the_kv_cache_holds_the_longer_of_context_and_prompt(tmp_path):
    dev = load_device(write_profile(tmp_path, MINIMAL))
    spec = typed(CATALOG["llama-3.2-1b"], "Q8_0")
    short = estimate(spec, dev, Scenario(ctx=512, prompt=128))
    long = estimate(spec, dev, Scenario(ctx=512, prompt=4096))
    assert long.kv_cache_mb == pytest.approx(short.kv_cache_mb * 4097 / 513)


def test_a_bad_calibration_block_is_a_clear_error(tmp_path):
    doc = yaml.safe_load(calibrated_profile(tmp_path).read_text())
    del doc["calibration"]["threads"][1]["decode_layer_us"]
    with pytest.raises(ConfigError, match=r"missing field 'calibration\.threads\.1\.decode_layer_us'"):
        load_device(write_profile(tmp_path, doc, "h2.yaml"))
    doc["calibration"]["threads"] = {"x": {}}
    with pytest.raises(ConfigError, match="thread counts"):
        load_device(write_profile(tmp_path, doc, "h3.yaml"))
    doc = json.loads(json.dumps(MINIMAL))
    doc["energy"] = {"dram_pj_per_bit": "lots"}
    with pytest.raises(ConfigError, match="energy.dram_pj_per_bit' must be a finite number"):
        load_device(write_profile(tmp_path, doc, "h4.yaml"))
    doc["energy"] = {"dram_pj": 3}
    with pytest.raises(ConfigError, match="unknown field 'energy.dram_pj'"):
        load_device(write_profile(tmp_path, doc, "h5.yaml"))


def test_a_profile_missing_a_field_names_the_field_and_file(tmp_path):
    doc = json.loads(json.dumps(MINIMAL))
    del doc["memory"]["capacity_gb"]
    path = write_profile(tmp_path, doc)
    with pytest.raises(ConfigError, match=r"dev\.yaml: missing field 'memory\.capacity_gb'"):
        load_device(path)
    doc = json.loads(json.dumps(MINIMAL))
    doc["memory"]["bandwidth_gbps"] = {"value": "fast"}
    with pytest.raises(ConfigError, match="memory.bandwidth_gbps.value' must be a number"):
        load_device(write_profile(tmp_path, doc))
    with pytest.raises(ConfigError, match="unknown device 'nope'"):
        load_device("nope")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_device(tmp_path / "bad.yaml")


def test_catalog_shapes_count_their_parameters():
    # published parameter counts (embeddings included once when tied)
    for name, billions in [("llama-3.1-8b", 8.03), ("llama-3.2-1b", 1.24), ("qwen2.5-0.5b", 0.494),
                           ("smollm2-135m", 0.1345), ("mixtral-8x7b", 46.7), ("llama-2-7b", 6.74)]:
        assert CATALOG[name].n_params / 1e9 == pytest.approx(billions, rel=0.02), name


def test_mixture_of_experts_reads_only_the_active_experts():
    spec = typed(CATALOG["mixtral-8x7b"], bpw=4.0)
    read = sum(op.bytes for op in decode_ops(spec, ctx=1) if op.kind == "weights")
    assert read / spec.weight_bytes == pytest.approx(12.9 / 46.7, rel=0.05)  # ~12.9B active of 46.7B


def test_a_gguf_model_keeps_its_own_types(tiny_llama, tiny_gemma3):
    from edgellm.formats.gguf import GGUFFile

    spec = load_model(str(tiny_llama))
    assert spec.label == tiny_llama.name
    g = GGUFFile(tiny_llama)
    assert spec.weight_bytes == sum(g.tensors[n].n_bytes for n, _, _ in spec.shape.weight_tensors())
    gemma = load_model(str(tiny_gemma3)).shape
    assert gemma.window == 4 and all(gemma.attended(i, 100) == 4 for i in range(gemma.n_layer))  # layers 0..4: local


@pytest.mark.parametrize("arch, kw", [("phi3", dict(head_dim=16)), ("qwen3moe", dict(n_ff=32, n_expert=8, n_expert_used=2))])
def test_fused_and_expert_models_are_planned_from_their_files(tmp_path, arch, kw):
    """Phi-3's fused matrices count once, at their stored type; a MoE model reads its routed experts only."""
    from edgellm.formats.gguf import GGUFFile
    from fixtures.tiny import build_tiny_gguf

    path = build_tiny_gguf(tmp_path / "m.gguf", arch=arch, **kw)
    spec = load_model(str(path))
    g = GGUFFile(path)
    matrices = sum(t.n_bytes for n, t in g.tensors.items() if len(t.shape) >= 2 and "gate_inp" not in n)
    assert spec.weight_bytes == matrices
    if arch == "qwen3moe":
        assert (spec.shape.n_expert, spec.shape.n_expert_used, spec.shape.d_ff) == (8, 2, 32)
        assert spec.shape.active_fraction("blk.0.ffn_up_exps.weight") == 0.25  # per token: 2 of 8 experts


def test_gemma_attends_a_window_on_five_layers_of_six():
    shape = CATALOG["gemma-3-270m"]
    assert [shape.attended(i, 2000) for i in range(12)] == [512] * 5 + [2000] + [512] * 5 + [2000]
    assert shape.attended(0, 100) == 100


def test_config_json_and_its_missing_fields(tmp_path):
    cfg = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "vocab_size": 100, "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    spec = load_model(str(tmp_path), "Q8_0")
    assert spec.shape.n_layer == 2 and spec.shape.head_dim == 16 and spec.shape.tied
    del cfg["vocab_size"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="missing field 'vocab_size'"):
        load_model(str(tmp_path))
    with pytest.raises(ConfigError, match="unknown model 'gpt-5'"):
        load_model("gpt-5")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "vocab_size": None}))
    with pytest.raises(ConfigError, match="missing field 'vocab_size'"):
        load_model(str(tmp_path))


def test_decode_on_a_spec_sheet_is_bytes_over_bandwidth(tmp_path):
    # hand-computed: a bpw-8 model of 100 M weights... take SmolLM2's shape at 8 bits per weight
    path = write_profile(tmp_path, MINIMAL)
    dev = load_device(path)
    spec = typed(CATALOG["smollm2-135m"], bpw=8.0)
    sc = Scenario(ctx=100, cache_type="f16", memory_efficiency=0.5)
    est = estimate(spec, dev, sc)
    s = spec.shape
    weights = s.n_params  # one byte each; the tied embedding is read once, as the output head
    kv = 2 * s.n_layer * s.n_head_kv * s.head_dim * 100 * KV_BYTES["f16"]
    assert est.decode_tps == pytest.approx(5e9 / (weights + kv), rel=1e-6)
    assert est.fits and est.bottleneck.startswith("memory bandwidth")
    # prefill is compute-bound at 1 TOPS x 0.5
    flops = sum(op.flops for op in prefill_ops(spec, sc.prompt))
    assert est.ttft_ms == pytest.approx(flops / 0.5e12 * 1e3, rel=0.05)


def test_streaming_from_storage_when_the_model_does_not_fit(tmp_path):
    dev = load_device(write_profile(tmp_path, MINIMAL))  # 1 GB of memory, 1 GB/s storage
    spec = typed(CATALOG["llama-3.2-3b"], bpw=4.0)  # 1.8 GB
    est = estimate(spec, dev, Scenario(ctx=64))
    assert not est.fits and est.streamed_mb_per_token > 0
    assert est.bottleneck.startswith("storage read")
    sparse = estimate(spec, dev, Scenario(ctx=64, sparsity=0.8))
    assert sparse.streamed_mb_per_token < est.streamed_mb_per_token
    assert sparse.decode_tps > est.decode_tps
    # the layers' matrices stream first: with room for the head, only layer bytes come from storage
    layers_read = sum(op.bytes for op in decode_ops(spec, 64) if op.kind == "weights" and op.layer >= 0)
    assert est.streamed_mb_per_token * 1e6 < layers_read
    with pytest.raises(ConfigError, match="exceeds"):
        estimate(spec, dev, Scenario(mem_budget_gb=5.0))
    with pytest.raises(ConfigError, match="KV cache and buffers alone"):
        estimate(spec, dev, Scenario(mem_budget_gb=0.05))


def calibrated_profile(tmp_path):
    doc = json.loads(json.dumps(MINIMAL))
    doc["calibration"] = {"storage_read_gbps": 1.0, "threads": {1: {
        "read_gbps": 20.0, "matvec_gbps": {"Q8_0": 10.0}, "matmul_gflops": {"Q8_0": 100.0},
        "decode_layer_us": 10.0, "decode_attention_ns_per_position": 50.0,
        "prefill_layer_us_per_token": 1.0, "prefill_attention_ns_per_position": 5.0}}}
    return write_profile(tmp_path, doc, "host.yaml")


def test_a_calibrated_host_uses_its_measured_rates(tmp_path):
    dev = load_device(calibrated_profile(tmp_path))
    spec = typed(CATALOG["smollm2-135m"], "Q8_0")
    s = spec.shape
    est = estimate(spec, dev, Scenario(threads=1, ctx=200))
    weights = sum(op.bytes for op in decode_ops(spec, 200) if op.kind == "weights")
    attention = s.n_layer * s.n_head * 200 * 50e-9
    # the synthetic model's step: its Q8_0 bytes at 10 GB/s plus 10 us per layer; its bytes over that time is
    # the rate a model's matrices stream at, and no per-layer cost is charged on top
    syn = synthetic_weight_bytes()
    stream = syn / (syn / 10e9 + SYN["n_layer"] * 10e-6)
    expected = weights / stream + attention
    assert 1 / est.decode_tps == pytest.approx(expected, rel=1e-6)
    assert stream < 10e9
    with pytest.raises(ConfigError, match="calibrated for threads"):
        estimate(spec, dev, Scenario(threads=2))


def test_plan_cli_json_has_the_documented_keys(capsys):
    assert main(["plan", "-m", "llama-3.2-3b", "-d", "raspberry-pi-5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("fits", "memory_mb", "ttft_ms", "decode_tps", "prefill_tps", "joules_per_token", "bottleneck"):
        assert key in out
    assert 3 < out["decode_tps"] < 9  # published: 4.88 tok/s (Ollama, Pi 5)


def test_plan_cli_with_several_accelerators(capsys):
    assert main(["plan", "-m", "llama-3.1-8b", "-d", "tesla-hw3", "--accelerators", "2", "--link-gbps", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["decode"]["best"] in ("pipeline", "tensor")
    assert out["multi_decode_tps"] > 0
    assert main(["plan", "-m", "llama-3.1-8b", "-d", "tesla-hw3", "--accelerators", "2"]) == 1
    assert "--link-gbps" in capsys.readouterr().err
    assert main(["plan", "-m", "llama-3.1-8b", "-d", "tesla-hw3", "--link-gbps", "8"]) == 1
    assert "--accelerators" in capsys.readouterr().err
    assert main(["plan", "-m", "llama-3.1-8b", "-d", "tesla-hw3", "--accelerators", "9", "--link-gbps", "8"]) == 1
    assert "at most 8" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["plan", "-m", "nope", "-d", "raspberry-pi-5"], "unknown model 'nope'"),
    (["plan", "-m", "llama-3.2-1b", "-d", "nope"], "unknown device 'nope'"),
    (["plan", "-m", "llama-3.2-1b", "-d", "raspberry-pi-5", "--mem-budget", "64GB"], "exceeds"),
    (["plan", "-m", "llama-3.2-1b", "-d", "raspberry-pi-5", "--quant", "Q9_X"], "unknown quantization type"),
])
def test_plan_bad_input_is_one_clear_line(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_plan_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", "-m", "llama-3.2-1b", "-d", "raspberry-pi-5", "--sparsity", "1.5"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["plan", "-m", "llama-3.2-1b", "-d", "raspberry-pi-5", "--mem-budget", "lots"])


def test_fit_lists_configurations_that_meet_the_speed_best_first(capsys):
    assert main(["fit", "-m", "llama-3.1-8b", "-d", "raspberry-pi-5", "--min-tps", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["decode_tps"] >= 3 for r in rows)
    dense = [r for r in rows if r["sparsity"] == 0]
    assert [r["bits_per_weight"] for r in dense] == sorted((r["bits_per_weight"] for r in dense), reverse=True)
    assert dense == rows  # nothing measured for this model in sparsity.yaml: dense rows only
    assert main(["fit", "-m", "llama-3.1-8b", "-d", "raspberry-pi-5", "--min-tps", "500"]) == 1


def test_devices_cli(capsys):
    assert main(["devices", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert any(r["name"] == "raspberry-pi-5" and r["bandwidth_gbps"] == 17.1 for r in rows)
    assert main(["devices", "show", "rk3588"]) == 0
    assert "RK3588" in capsys.readouterr().out


def test_sweep_writes_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["sweep", "-m", "llama-3.2-3b", "-d", "raspberry-pi-5", "-d", "apple-m4", "--out", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for p in out["plots"]:
        assert Path(p).stat().st_size > 10_000
    # 4-bit needs half the bandwidth of 8-bit for the same speed (weights dominate at this context)
    bits = out["requirements"]["bits"]
    bw = dict(zip(bits, out["requirements"]["bandwidth_gbps"]))
    assert 1.7 < bw[8.0] / bw[4.0] < 2.0


def test_calibration_pieces(tmp_path):
    from edgellm import kernels
    from edgellm.formats.quants import dequantize
    from edgellm.planner.calibrate import packed_matrix, storage_read_gbps

    if kernels._C is None:
        pytest.skip("needs the C kernels")
    w = packed_matrix(GGMLType.Q4_K, 100, 512)
    assert w.shape == (100, get_format(GGMLType.Q4_K).row_bytes(512))
    assert np.isfinite(dequantize(w, GGMLType.Q4_K, (100, 512))).all()
    gbps, method = storage_read_gbps(tmp_path, n_bytes=16 << 20, block=4 << 20)
    assert gbps > 0 and method in ("O_DIRECT", "posix_fadvise(DONTNEED)")
    assert not list(tmp_path.iterdir())  # its scratch file is gone


def test_fit_under_a_budget_gives_commands_that_stream(capsys):
    """A configuration that streams runs only with the budget it was planned for: the command carries it, with
    the context and cache type the budget was split for; sparse settings, which the runtime does not stream,
    are not offered for it."""
    import shlex

    from edgellm.cli.main import build_parser

    assert main(["fit", "-m", "llama-3.2-3b", "-d", "snapdragon-8-gen-3", "--min-tps", "1", "--mem-budget", "1.5GB",
                 "--ctx", "256", "--cache-type", "f16", "--json"]) == 0  # fmt: skip
    rows = json.loads(capsys.readouterr().out)
    assert any(r["streamed_mb_per_token"] > 0 for r in rows)
    parser = build_parser()
    for r in rows:
        args = parser.parse_args(shlex.split(r["command"])[1:])
        assert args.mem_budget == 1_500_000_000 and args.ctx_size == 256 and args.cache_type == "f16"
        assert r["streamed_mb_per_token"] >= 0
        if r["streamed_mb_per_token"] > 0:
            assert r["sparsity"] == 0 and r["head"] == 0


def test_synthetic_weight_bytes_are_the_calibration_models(tmp_path, monkeypatch):
    """stream_rate divides by the synthetic model's bytes: they must be the bytes calibrate writes."""
    from edgellm.formats.gguf import GGUFFile
    from edgellm.planner import calibrate

    monkeypatch.setitem(calibrate.SYN, "n_layer", 2)
    monkeypatch.setitem(calibrate.SYN, "d_ff", 256)
    g = GGUFFile(calibrate.synthetic_model(tmp_path / "syn.gguf"))
    matrices = sum(t.n_bytes for t in g.tensors.values() if len(t.shape) == 2)
    assert calibrate.synthetic_weight_bytes() == matrices


def test_engine_costs_run_on_a_small_synthetic_model(monkeypatch):
    """calibrate's engine measurements run end to end (they broke once, silently, when bench's helpers changed)."""
    from edgellm import kernels
    from edgellm.planner import calibrate

    if kernels._C is None:
        pytest.skip("calibration needs the C kernels")
    for key, value in dict(n_layer=2, d=256, n_head=4, n_head_kv=2, head_dim=64, d_ff=512, vocab=512).items():
        monkeypatch.setitem(calibrate.SYN, key, value)
    costs = calibrate.engine_costs(1, matvec_gbps_q8=10.0, matmul_gflops_q8=50.0, depth=64)
    assert set(costs) == set(ENGINE_KEYS)
    assert all(np.isfinite(v) and v >= 0 for v in costs.values())
