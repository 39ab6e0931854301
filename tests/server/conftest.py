"""A live `edgellm serve` in a subprocess on a free loopback port, as users run it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen
    api_key: str | None = None
    log_path: str | None = None

    def log(self) -> str:
        """What the server printed."""
        return Path(self.log_path).read_text(errors="replace") if self.log_path else ""

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path)
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def post(self, path: str, body, timeout: float = 60.0, headers: dict | None = None) -> tuple[int, dict]:
        """POST `body` (bytes as is, anything else as JSON); the status and the JSON answer."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})  # fmt: skip
        if self.api_key and "Authorization" not in (headers or {}):
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def metrics(self) -> dict[str, float]:
        """/metrics as {name{labels}: value}."""
        _, body = self.get("/metrics")
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model, *args: str, api_key: str | None = None, env: dict | None = None,
                 wait: float = 120.0) -> LiveServer:  # fmt: skip
    port = free_port()
    cmd = [sys.executable, "-m", "edgellm", "serve", "-m", str(model), "--port", str(port), *args]
    if api_key:
        cmd += ["--api-key", api_key]
    log = tempfile.NamedTemporaryFile(prefix="edgellm-serve-", suffix=".log", delete=False)  # a pipe could fill up
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    server = LiveServer(f"http://127.0.0.1:{port}", proc, api_key, log.name)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {server.log()}")
        try:
            if server.get("/health", timeout=2)[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become healthy")


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()
    if server.log_path:
        os.unlink(server.log_path)


@pytest.fixture(scope="session")
def long_llama(tmp_path_factory):
    """A tiny random model with a 32k-token context: generations that run long enough to be interrupted."""
    from fixtures.tiny import build_tiny_gguf

    path = tmp_path_factory.mktemp("long") / "long-llama.gguf"
    return build_tiny_gguf(path, arch="llama", meta_extra={"llama.context_length": 32768})


@pytest.fixture(scope="session")
def tiny_server(tiny_llama):
    """A server on the tiny random model: protocol and limits, seconds to start."""
    server = start_server(tiny_llama, "--parallel", "4", "--ctx-size", "256", "--threads", "1")
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def smollm2_server(real_model_path):
    """A server on SmolLM2-135M-Instruct Q4_1 (the default model): real answers."""
    server = start_server(real_model_path("smollm2-135m"), "--parallel", "4", "--ctx-size", "1024")
    yield server
    stop_server(server)
