"""Property-based fuzzing from the published OpenAPI schema (schemathesis): thousands of generated requests, valid
and invalid, against a live server; none may get a 500. The server's own /metrics count what it received."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import start_server, stop_server

MIN_REQUESTS = 2000


def test_generated_requests_never_get_a_server_error(tiny_llama, tmp_path):
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if cli is None:
        pytest.skip("schemathesis is not installed")
    # a short context keeps each generated completion short; a queue long enough that nothing is refused
    server = start_server(tiny_llama, "--ctx-size", "64", "--threads", "1", "--queue-size", "256")
    try:
        before = server.metrics()  # counts /health's 503s while the model loaded: those are not the fuzz run's
        run = subprocess.run([cli, "run", server.url + "/openapi.json", "--checks", "not_a_server_error",
                              "--max-examples", "300", "--seed", "1", "--workers", "2", "--no-shrink"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=1200)  # fmt: skip
        metrics, log = server.metrics(), server.log()
    finally:
        stop_server(server)
    # The server is judged by what it answered (its own /metrics, below) and by schemathesis's checks; an error
    # inside schemathesis itself (a generator that crashed, as CPython 3.11's ast module can under hypothesis) is
    # the tool's, not the server's, so it fails the run only if it stopped the tool from sending enough requests.
    assert "Failures:" not in run.stdout, run.stdout[-3000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert cases and cases[1] == cases[2], run.stdout[-3000:]
    assert run.returncode == 0 or "Runtime Error" in run.stdout, run.stdout[-3000:]
    assert metrics["edgellm_http_requests_total"] - before["edgellm_http_requests_total"] >= MIN_REQUESTS
    server_errors = {k: v - before.get(k, 0) for k, v in metrics.items()
                     if k.startswith('edgellm_http_responses_total{code="5') and v > before.get(k, 0)}  # fmt: skip
    why = [line for line in log.splitlines() if "Traceback" in line or "Error" in line or "server error" in line]
    assert not server_errors, (server_errors, why[-20:], log[-2000:])
