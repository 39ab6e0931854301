"""The command line on tiny models: outputs people script (--json) and one-line errors for bad input."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest

from edgellm.cli.main import main
from edgellm.formats.gguf import GGUFFile, TensorData, write_gguf


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELLM_HOME", str(tmp_path / "home"))


def test_run_json_has_the_documented_keys(capsys, tiny_llama):
    code, out, err = run_cli(capsys, "run", "-m", str(tiny_llama), "-p", "the sea", "--raw", "-n", "5",
                             "--temp", "0", "--json")  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert {"text", "tokens", "n_prompt_tokens", "prompt_tps", "gen_tps"} <= set(data)
    assert len(data["tokens"]) == 5 and data["n_prompt_tokens"] > 0 and data["gen_tps"] > 0


def test_run_is_deterministic_with_a_seed(capsys, tiny_gemma3):
    args = ("run", "-m", str(tiny_gemma3), "-p", "the sea", "--raw", "-n", "8", "--seed", "7", "--json")
    first = json.loads(run_cli(capsys, *args)[1])["tokens"]
    second = json.loads(run_cli(capsys, *args)[1])["tokens"]
    assert first == second


def test_tokenize_json(capsys, tiny_llama):
    code, out, _ = run_cli(capsys, "tokenize", "-m", str(tiny_llama), "the", "--json")
    assert code == 0
    # Byte-level pieces sit after 3 specials; merge "h e" is the second merged piece.
    assert json.loads(out) == {"ids": [3 + ord("t"), 3 + 256 + 1]}


def test_show_json_reports_types_and_bits(capsys, tiny_llama):
    code, out, _ = run_cli(capsys, "show", str(tiny_llama), "--json")
    info = json.loads(out)
    assert code == 0 and info["architecture"] == "llama" and info["chat_template"] is True
    assert set(info["tensor_types"]) >= {"Q8_0", "Q4_0", "F32"} and 4 < info["bits_per_weight"] < 32


def test_perplexity_json(capsys, tiny_llama, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the sea and the sand and the sun " * 40)
    code, out, err = run_cli(capsys, "perplexity", "-m", str(tiny_llama), "-f", str(text), "-c", "32",
                             "--chunks", "3", "--json")  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert data["n_chunks"] == 3 and data["n_ctx"] == 32 and data["ppl"] > 1 and data["ppl_stderr"] > 0


def test_chat_reads_turns_from_stdin(capsys, tiny_llama, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/reset\nagain\n"))
    code, out, err = run_cli(capsys, "chat", "-m", str(tiny_llama), "-n", "3", "--temp", "0", "--stop", "\n")
    assert code == 0, err
    assert len(out.splitlines()) == 2  # one reply line per user turn


def _truncated(src, dst):
    dst.write_bytes(src.read_bytes()[:-100])
    return dst


def _with_arch(src, dst, arch):
    g = GGUFFile(src)
    meta = dict(g.metadata) | {"general.architecture": arch}
    tensors = [TensorData(t.name, t.type, t.shape, g.raw(t.name).reshape(-1)) for t in g.tensors.values()]
    return write_gguf(dst, meta, tensors, metadata_types=g.metadata_types)


def _with_iq_tensor(dst):
    raw = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)
    raw += struct.pack("<Q", 20) + b"general.architecture" + struct.pack("<IQ", 8, 5) + b"llama"
    raw += struct.pack("<Q", 1) + b"w" + struct.pack("<IQQ", 1, 256, 19) + struct.pack("<Q", 0)
    raw += b"\0" * (-len(raw) % 32) + b"\0" * 512
    dst.write_bytes(raw)
    return dst


@pytest.mark.parametrize("case,message", [
    ("unknown_name", "unknown model 'no-such-model': not a file and not in the catalog"),
    ("missing_path", "no-such-dir/model.gguf"),
    ("not_gguf", "not a GGUF file (starts with b'just'"),
    ("truncated", "truncated download? re-fetch it and check its sha256"),
    ("unsupported_arch", "architecture 'rwkv6' is not supported; supported: gemma3, llama, phi3, qwen2, qwen3, qwen3moe, smollm3"),
    ("unsupported_type", "tensor type 19 (IQ1_S) is not supported; supported: F32, F16"),
])  # fmt: skip
def test_bad_model_gives_one_line_error(capsys, tmp_path, tiny_llama, case, message):
    model = {
        "unknown_name": lambda: "no-such-model",
        "missing_path": lambda: str(tmp_path / "no-such-dir" / "model.gguf"),
        "not_gguf": lambda: (tmp_path / "x.gguf").write_text("just text") and str(tmp_path / "x.gguf"),
        "truncated": lambda: str(_truncated(tiny_llama, tmp_path / "cut.gguf")),
        "unsupported_arch": lambda: str(_with_arch(tiny_llama, tmp_path / "rwkv.gguf", "rwkv6")),
        "unsupported_type": lambda: str(_with_iq_tensor(tmp_path / "iq.gguf")),
    }[case]()
    code, out, err = run_cli(capsys, "run", "-m", model, "-p", "hi", "-n", "1")
    assert code == 1
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_prompt_longer_than_context(capsys, tiny_llama):
    code, _, err = run_cli(capsys, "run", "-m", str(tiny_llama), "-p", "the sea " * 50, "--raw", "-c", "16")
    assert code == 1
    assert "prompt has 202 tokens, more than the context size 16" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv,message", [
    (["run", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["perplexity", "-m", "x"], "the following arguments are required: -f/--file"),
    (["run", "-c", "0"], "expected a positive integer, got 0"),
    (["nonsense"], "invalid choice: 'nonsense'"),
])  # fmt: skip
def test_usage_errors_exit_2_with_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and err.count("\n") == 1


def test_missing_text_file_for_perplexity(capsys, tiny_llama, tmp_path):
    code, _, err = run_cli(capsys, "perplexity", "-m", str(tiny_llama), "-f", str(tmp_path / "none.txt"))
    assert code == 1 and "none.txt: No such file or directory" in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="unknown model"):
        main(["--debug", "run", "-m", "no-such-model"])
