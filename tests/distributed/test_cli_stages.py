"""`run --stages` and `bench --stages` from the command line: the same tokens, the pipeline's figures in --json."""

from __future__ import annotations

import json

from edgellm.cli.main import main


def run_cli(capsys, *argv: str):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_with_stages_reports_the_pipeline_and_the_same_tokens(capsys, tiny_llama):
    argv = ["run", "-m", str(tiny_llama), "-p", "the sea", "--raw", "-n", "8", "--temp", "0", "--json", "-t", "1"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    single = json.loads(out)
    assert single["pipeline"] is None
    code, out, err = run_cli(capsys, *argv, "--stages", "2")
    assert code == 0, err
    staged = json.loads(out)
    assert staged["tokens"] == single["tokens"]
    p = staged["pipeline"]
    assert [s["layers"] for s in p["stages"]] == [[0, 1], [1, 2]]
    assert p["link_bytes_per_token"] == 64 * 4  # one float32 hidden state of the tiny model per token


def test_bench_compares_stage_counts_in_one_run(capsys, tiny_llama):
    code, out, err = run_cli(capsys, "bench", "-m", str(tiny_llama), "-p", "8", "-n", "4", "-r", "1", "-t", "1",
                             "--stages", "1,2", "--json")  # fmt: skip
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["stages"], r["test"]) for r in rows] == [(1, "pp8"), (1, "tg4"), (2, "pp8"), (2, "tg4")]
    assert rows[1]["pipeline"] is None and rows[3]["pipeline"]["tokens"] == 4
    assert len(rows[3]["pipeline"]["hop_ms"]) == 3


def test_stage_options_are_checked(capsys, tiny_llama):
    code, _, err = run_cli(capsys, "run", "-m", str(tiny_llama), "--stages", "3", "-n", "1")
    assert code != 0 and "--stages must be between 1 and 2" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "run", "-m", str(tiny_llama), "--link-gbps", "1", "-n", "1")
    assert code != 0 and "give --stages N too" in err
