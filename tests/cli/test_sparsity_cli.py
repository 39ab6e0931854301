"""`edgellm sparsify` and the --sparsity / --head options on a tiny model whose outputs are whole 64-row tiles."""

from __future__ import annotations

import json

import pytest

from edgellm import kernels
from fixtures.tiny import build_tiny_gguf
from tests.cli.test_cli import run_cli

pytestmark = pytest.mark.skipif(kernels._C is None, reason="C extension not built")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELLM_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_gguf(tmp_path_factory.mktemp("sp") / "tiny.gguf", n_embd=128, n_ff=192, n_head=4, n_head_kv=2)


@pytest.fixture
def calibration(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("the sea is blue and the ship sails on the sea at night. " * 40)
    return path


def test_sparsify_then_run_bench_and_kld(capsys, tiny, calibration):
    code, out, err = run_cli(capsys, "sparsify", "-m", str(tiny), "-f", str(calibration), "--sparsity", "0.4",
                             "--head", "8", "--head-rank", "32", "--chunks", "2", "--json")  # fmt: skip
    assert code == 0, err
    made = json.loads(out)
    assert made[0]["sparsity"] == 0.4 and made[1]["head"] == 8
    code, out, err = run_cli(capsys, "run", "-m", str(tiny), "-p", "the sea", "--raw", "-n", "6", "--temp", "0",
                             "--sparsity", "0.4", "--head", "8", "--json")  # fmt: skip
    assert code == 0, err
    sparse = json.loads(out)
    code, out, err = run_cli(capsys, "run", "-m", str(tiny), "-p", "the sea", "--raw", "-n", "6", "--temp", "0", "--json")
    dense = json.loads(out)
    assert 0 < sparse["bytes_read_per_token"] < dense["bytes_read_per_token"]
    code, out, err = run_cli(capsys, "bench", "-m", str(tiny), "-p", "0", "-n", "4", "-r", "1", "-t", "1",
                             "--sparsity", "0,0.4", "--head", "off,8", "--json")  # fmt: skip
    assert code == 0, err
    rows = json.loads(out)
    assert {(r["sparsity"], r["head"]) for r in rows} == {("0", None), ("0", "8"), ("0.4", None), ("0.4", "8")}
    read = {(r["sparsity"], r["head"]): r["bytes_read_per_token"] for r in rows}
    assert read["0.4", "8"] < read["0.4", None] < read["0", None] and read["0", "8"] < read["0", None]
    code, out, err = run_cli(capsys, "kld", "--ref", str(tiny), "-m", str(tiny), "-f", str(calibration), "-c", "64",
                             "--chunks", "2", "--sparsity", "0.4", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["kld_mean"] > 0


@pytest.mark.parametrize("args, message", [
    (("--sparsity", "0.3"), "no calibrated thresholds for 30 % sparsity"),
    (("--sparsity", "1.5"), "a fraction in [0, 1)"),
    (("--sparsity", "nofile.gguf"), "no such file"),
    (("--head", "16"), "no cheap head"),
])  # fmt: skip
def test_missing_or_bad_settings_are_one_line_errors(capsys, tiny, args, message):
    code, out, err = run_cli(capsys, "run", "-m", str(tiny), "-p", "x", "-n", "1", *args)
    assert code == 1 and message in err and err.count("\n") == 1
