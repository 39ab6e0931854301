"""`edgellm serve --stages 2`: the same answers as one process; a stage killed mid-stream fails that request with
a clear error, the server stays up, and the next request is answered by new stages."""

from __future__ import annotations

import json
import os
import re
import signal
import time

from edgellm import LLM
from fixtures.tiny import build_tiny_gguf
from conftest import start_server, stop_server
from test_limits import _stream


def test_a_staged_server_answers_and_survives_a_dead_stage(tmp_path):
    model = build_tiny_gguf(tmp_path / "long-four.gguf", n_layers=4, seed=5,
                            meta_extra={"llama.context_length": 32768})  # fmt: skip
    with LLM(model, n_ctx=4096, n_threads=1, pull=False) as single:
        expect = single.create_completion([1, 7, 3], max_tokens=24, temperature=0.0)["choices"][0]["text"]
    server = start_server(model, "--stages", "2", "--threads", "1", "--parallel", "2", "--ctx-size", "4096")
    try:
        body = {"prompt": [1, 7, 3], "max_tokens": 24, "temperature": 0}
        code, answer = server.post("/v1/completions", body)
        assert code == 200 and answer["choices"][0]["text"] == expect
        stages = re.findall(r"stage (\d): layers (\d+)-(\d+), 1 threads, pid (\d+)", server.log())
        assert [s[0] for s in stages] == ["0", "1"], server.log()

        conn, response, events = _stream(server, {"prompt": "the", "max_tokens": 4000, "temperature": 0}, 3)
        assert len(events) == 3
        os.kill(int(stages[1][3]), signal.SIGKILL)
        tail = response.read().decode()
        conn.close()
        errors = [json.loads(line[6:]) for line in tail.splitlines() if line.startswith("data: {") and '"error"' in line]
        assert errors and "stage 1" in errors[0]["error"]["message"] and "died" in errors[0]["error"]["message"]
        assert tail.rstrip().endswith("data: [DONE]")

        assert server.get("/health")[0] == 200
        t0 = time.monotonic()
        code, answer = server.post("/v1/completions", body)
        assert code == 200 and answer["choices"][0]["text"] == expect, answer
        assert time.monotonic() - t0 < 60
        metrics = server.metrics()
        assert metrics['edgellm_requests_total{reason="error"}'] == 1
    finally:
        stop_server(server)
