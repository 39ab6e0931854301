"""Reading less per token in the planner: byte accounting of --sparsity/--head, the measured curves of
sparsity.yaml, and `fit` listing only what the runtime can run."""

import json
import shlex

import pytest
import yaml

import edgellm.planner.sparsity as sparsity_mod
from edgellm.cli.main import build_parser, main
from edgellm.errors import ConfigError
from edgellm.planner.device import load_device
from edgellm.planner.estimate import Scenario, decode_ops, estimate
from edgellm.planner.fit import fit, settings
from edgellm.planner.model import CATALOG, Shape, typed
from edgellm.planner.sparsity import load_curves

# 2 layers, d 256, 4 heads of 64 (2 KV heads), FFN 512, vocabulary 1024, tied head: every matrix takes the
# column layout (outputs in multiples of 64, inputs of 32)
TOY = Shape("toy", 2, 256, 4, 2, 64, 512, 1024, True)
# weights per layer of q, k, v, o, gate, up, down
LAYER = 256 * 256 + 128 * 256 + 128 * 256 + 256 * 256 + 512 * 256 + 512 * 256 + 256 * 512


@pytest.fixture
def curves(tmp_path, monkeypatch):
    """Point the planner at a sparsity.yaml of the test's own."""

    def write(doc) -> None:
        path = tmp_path / "sparsity.yaml"
        path.write_text(yaml.safe_dump(doc))
        monkeypatch.setattr(sparsity_mod, "CURVES_PATH", path)

    write({})
    return write


def weights_read(spec, **kw) -> float:
    return sum(op.bytes for op in decode_ops(spec, 16, **kw) if op.kind == "weights")


def test_sparsity_and_head_bytes_by_hand_without_a_curve(curves):
    spec = typed(TOY, "Q8_0")
    assert all(t.name == "Q8_0" for t in spec.types.values())
    head = 1024 * 256 * 34 / 32  # Q8_0: 34 bytes per 32 weights
    dense = 2 * LAYER * 34 / 32 + head
    assert weights_read(spec) == pytest.approx(dense)
    # column layout of Q8_0: an int8 per weight, one fp16 scale per 32 inputs and output; 40 % of inputs skipped
    sparse = 2 * LAYER * (0.6 * 8 + 16 / 32) / 8 + head
    assert weights_read(spec, sparsity=0.4) == pytest.approx(sparse)
    # candidate head: a Q3_NL copy (13 bytes per 32 weights) scores all 1024 tokens, 64 exact Q8_0 rows
    cheap = 1024 * 256 * 13 / 32
    assert weights_read(spec, head_candidates=64) == pytest.approx(2 * LAYER * 34 / 32 + cheap + 64 * 256 * 34 / 32)
    assert weights_read(spec, sparsity=0.4, head_candidates=64) == pytest.approx(sparse - head + cheap + 64 * 272)


def test_low_bit_k_quants_read_more_sparse_than_dense(curves):
    """Q2_K's column layout holds 4-bit integers and two fp16 scales per 16 inputs: 6 bits per weight read at
    no sparsity, against 2.625 in the file; the planner must not pretend sparsity helps there."""
    spec = typed(TOY, "Q2_K")
    assert spec.types["blk.0.ffn_up.weight"].name == "Q2_K"
    ops = {op.name: op for op in decode_ops(spec, 16, sparsity=0.25)}
    assert ops["blk.0.ffn_up.weight"].bytes == pytest.approx(512 * 256 * (0.75 * 4 + 2) / 8)
    assert ops["blk.0.ffn_up.weight"].bytes > 512 * 256 * 2.625 / 8


def test_a_measured_curve_sets_the_bytes_and_carries_to_other_types(curves):
    curves({"toy": {"model": "toy.gguf", "weights": "Q8_0", "host": "cpu", "threads": 1,
                    "sparsity": {0.5: {"linear_bytes_fraction": 0.6, "decode_speedup": 1.2, "kld": 0.05}},
                    "head": {"candidates": 64, "type": "Q3_NL", "head_bytes_fraction": 0.45, "kld": 0.01}}})
    q8 = typed(TOY, "Q8_0")
    head = 1024 * 272
    assert weights_read(q8, sparsity=0.5) == pytest.approx(0.6 * 2 * LAYER * 8.5 / 8 + head)
    # skipped fraction k on the measured file: 0.6 * 8.5 = (1 - k) * 8 + 0.5  ->  k = 0.425
    k = 1 - (0.6 * 8.5 - 0.5) / 8
    assert weights_read(q8, sparsity=0.25) == pytest.approx(2 * LAYER * ((1 - k / 2) * 8 + 0.5) / 8 + head)
    q4 = typed(TOY, "Q4_0")  # Q4_0 columns: 4-bit integers, scale and offset fp16 per 32 inputs
    q4_head = q4.tensor_bytes("token_embd.weight", 1024, 256)
    assert weights_read(q4, sparsity=0.5) == pytest.approx(2 * LAYER * ((1 - k) * 4 + 1) / 8 + q4_head)
    # above the measured levels: the layout's own accounting
    assert weights_read(q8, sparsity=0.7) == pytest.approx(2 * LAYER * (0.3 * 8 + 0.5) / 8 + head)
    # head: measured fraction at 64 candidates, exact rows added or removed for another K
    assert weights_read(q8, head_candidates=64) == pytest.approx(2 * LAYER * 8.5 / 8 + 0.45 * head)
    assert weights_read(q8, head_candidates=32) == pytest.approx(2 * LAYER * 8.5 / 8 + 0.45 * head - 32 * 272)


def test_streaming_uses_the_sparse_bytes(curves, tmp_path):
    doc = {"name": "toy", "class": "board", "memory": {"bandwidth_gbps": 10.0, "capacity_gb": 1.0},
           "storage": {"read_gbps": 1.0}, "units": [{"name": "cpu", "int8_tops": 1.0}]}
    (tmp_path / "dev.yaml").write_text(yaml.safe_dump(doc))
    dev = load_device(tmp_path / "dev.yaml")
    spec = typed(CATALOG["llama-3.2-3b"], "Q8_0")  # 3.4 GB: streams
    dense = estimate(spec, dev, Scenario(ctx=64))
    sparse = estimate(spec, dev, Scenario(ctx=64, sparsity=0.5, head_candidates=64))
    assert not sparse.fits and 0 < sparse.streamed_mb_per_token < dense.streamed_mb_per_token
    assert sparse.weights_read_mb_per_token < dense.weights_read_mb_per_token
    assert sparse.decode_tps > dense.decode_tps and sparse.decode_speedup_predicted == pytest.approx(
        sparse.decode_tps / dense.decode_tps)
    assert sparse.extra_mb > 0 and sparse.bytes_measured is False


def test_the_measured_speedup_is_reported_next_to_the_planners(curves, capsys):
    curves({"smollm2-135m": {"model": "smollm2-135m", "weights": "Q4_1", "host": "Test CPU", "threads": 1,
                             "sparsity": {0.4: {"linear_bytes_fraction": 0.7, "decode_speedup": 1.1, "kld": 0.05}}}})
    assert main(["plan", "-m", "smollm2-135m", "-d", "raspberry-pi-5", "--quant", "Q4_1", "--sparsity", "0.4",
                 "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["decode_speedup_measured"] == {"host": "Test CPU", "threads": 1, "weights": "Q4_1", "sparsity": 1.1, "head": None}
    assert out["decode_speedup_predicted"] > 1 and out["bytes_measured"] is True
    assert any("Test CPU" in n for n in out["notes"])


def test_fit_lists_only_measured_levels_with_runnable_commands(curves, capsys):
    curves({"smollm2-135m": {"model": "smollm2-135m", "weights": "Q4_1", "host": "cpu", "threads": 1, "sparsity": {
        0.25: {"linear_bytes_fraction": 0.8, "decode_speedup": 1.1, "ppl_increase_pct": 3.0, "kld": 0.02},
        0.4: {"linear_bytes_fraction": None, "decode_speedup": None, "ppl_increase_pct": 7.5, "kld": None},
        0.5: {"linear_bytes_fraction": 0.55, "decode_speedup": 1.3, "ppl_increase_pct": None, "kld": None},
        0.8: None}, "head": {"candidates": 64, "kld": 0.007}}})
    assert main(["fit", "-m", "smollm2-135m", "-d", "raspberry-pi-5", "--min-tps", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["sparsity"] for r in rows} == {0.0, 0.25, 0.4}  # 0.5 and 0.8 have no quality measurement
    assert {r["head"] for r in rows} == {0, 64}
    parser = build_parser()
    for r in rows:
        argv = shlex.split(r["command"])
        assert argv[:2] == ["edgellm", "run"]
        args = parser.parse_args(argv[1:])
        assert args.command == "run" and args.model == r["model"]
        assert (args.sparsity is None) == (r["sparsity"] == 0) and (args.head is None) == (r["head"] == 0)
        if r["sparsity"]:
            assert float(args.sparsity) == r["sparsity"]
            assert any(f"--sparsity {r['sparsity']:g}" in p for p in r["prepare"] if " sparsify " in p)
        if r["head"]:
            assert int(args.head) == r["head"]
        if r["quant"] == "Q4_1":  # the measured, shipped file runs by its catalog name
            assert r["model"] == "smollm2-135m" and not any(" quantize " in p for p in r["prepare"])
        else:
            assert any(f"--type {r['quant']}" in p for p in r["prepare"])
    # best quality first: the summed KLD never decreases down the list where it is known
    known = [r["kld"] for r in rows if r["kld"] is not None]
    assert known == sorted(known)


def test_fit_without_measurements_lists_dense_only(curves, capsys):
    curves({"smollm2-135m": {"model": "smollm2-135m", "weights": "Q4_1", "sparsity": {0.4: None}, "head": {"candidates": 64}}})
    device = load_device("raspberry-pi-5")
    rows = fit("smollm2-135m", device, Scenario(), 1.0)
    assert rows and all(r["sparsity"] == 0 and r["head"] == 0 for r in rows)
    assert all(r["command"].startswith("edgellm run -m ") and "--sparsity" not in r["command"] for r in rows)


def test_the_shipped_yaml_loads_and_its_placeholders_are_not_measured():
    curves = load_curves()
    assert {"smollm2-135m", "gemma-3-270m"} <= set(curves)  # runtime names map to the planner's
    for c in curves.values():
        for lv in c.levels:
            if lv.kld is None and lv.ppl_increase_pct is None:
                assert lv.target not in c.measured_levels()
        assert all(s in c.measured_levels() or s == 0 for s, _ in settings(c))


@pytest.mark.parametrize("doc, message", [
    ({"toy": {"sparsity": {0.4: {"kld": "small"}}}}, r"toy\.sparsity\.0\.4\.kld must be null or a number"),
    ({"toy": {"sparsity": {1.5: {}}}}, "fraction in"),
    ({"toy": {"sparsity": {0.4: {"linear_bytes_fraction": 0.7}}}}, r"toy\.weights .* is needed"),
    ({"toy": {"weights": "Q9_X"}}, "unknown quantization type"),
    ({"toy": {"head": {"candidates": 0}}}, "candidates must be a positive integer"),
    ({"toy": {"speed": 1}}, "unknown field 'toy.speed'"),
])
def test_a_bad_curve_is_a_clear_error(curves, doc, message):
    curves(doc)
    with pytest.raises(ConfigError, match=message):
        load_curves()


@pytest.mark.parametrize("argv, message", [
    (["--head", "100000"], "the number of candidates must be in 1..49152"),
])
def test_plan_bad_head_is_one_line(argv, message, capsys):
    assert main(["plan", "-m", "smollm2-135m", "-d", "raspberry-pi-5", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_plan_head_usage_errors():
    for bad in ("0", "many"):
        with pytest.raises(SystemExit) as e:
            main(["plan", "-m", "smollm2-135m", "-d", "raspberry-pi-5", "--head", bad])
        assert e.value.code == 2
