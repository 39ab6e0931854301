"""Limits and failures of a live server: bad input gets an OpenAI error with the right status (never a 500), a full
queue 503, a client that leaves frees its slot, a late request 504, and a chat's second turn reuses the first."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse

from conftest import LiveServer, free_port, start_server, stop_server


def _error(status_and_body, status: int) -> str:
    code, body = status_and_body
    assert code == status, body
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    return body["error"]["message"]


def test_bad_bodies_are_400_with_openai_errors(tiny_server):
    s = tiny_server
    assert "JSON" in _error(s.post("/v1/chat/completions", b"{not json"), 400)
    assert "messages" in _error(s.post("/v1/chat/completions", {"messages": "hi"}), 400)
    assert "messages" in _error(s.post("/v1/chat/completions", {"messages": []}), 400)
    assert "role" in _error(s.post("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}), 400)
    assert "temperature" in _error(s.post("/v1/completions", {"prompt": "a", "temperature": -1}), 400)
    assert "n" in _error(s.post("/v1/completions", {"prompt": "a", "n": 2}), 400)
    assert "prompt" in _error(s.post("/v1/completions", {"prompt": [1, -5]}), 400)
    assert "vocabulary" in _error(s.post("/v1/completions", {"prompt": [1, 99999]}), 400)
    assert "vocabulary" in _error(s.post("/detokenize", {"tokens": [99999]}), 400)
    assert "logit_bias" in _error(s.post("/v1/completions", {"prompt": "a", "logit_bias": {"x": 1}}), 400)
    assert "empty" in _error(s.post("/v1/completions", {"prompt": ""}), 400)


def test_prompt_and_max_tokens_are_checked_against_the_context(tiny_server):
    s = tiny_server  # 256 tokens per sequence
    message = _error(s.post("/v1/completions", {"prompt": [3] * 300}), 400)
    assert "context" in message and "256" in message
    message = _error(s.post("/v1/completions", {"prompt": "the cat", "max_tokens": 300}), 400)
    assert "max_tokens" in message


def test_an_oversized_body_is_413_before_it_is_read(tiny_server):
    """Declared too large: answered from the headers. Sent chunked without a length: cut off at the limit."""
    url = urlparse(tiny_server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(5 << 20))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "body" in json.loads(response.read())["error"]["message"]
    conn.close()

    def chunks():
        yield b'{"prompt": "'
        for _ in range(80):
            yield b"a" * (64 << 10)
        yield b'"}'

    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("POST", "/v1/completions", chunks(), {"Content-Type": "application/json"}, encode_chunked=True)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed while the rest was still being sent
    response = conn.getresponse()
    assert response.status == 413
    conn.close()


def test_unknown_paths_and_methods(tiny_server):
    assert tiny_server.get("/v1/nothing")[0] == 404
    assert tiny_server.get("/v1/chat/completions")[0] == 405
    code, body = tiny_server.get("/openapi.json")
    assert code == 200 and "/v1/chat/completions" in json.loads(body)["paths"]


def test_api_key_is_required_when_set(tiny_llama):
    server = start_server(tiny_llama, "--ctx-size", "128", "--threads", "1", api_key="sesame")
    try:
        code, body = server.post("/v1/completions", {"prompt": "a", "max_tokens": 2}, headers={"Authorization": "x"})
        assert code == 401 and body["error"]["type"] == "authentication_error"
        assert server.post("/v1/completions", {"prompt": "a", "max_tokens": 2})[0] == 200
        assert server.get("/health")[0] == 200  # open: load balancers probe it
    finally:
        stop_server(server)


def _stream(server, body: dict, read_chunks: int | None = None):
    """Open a streaming request; read `read_chunks` SSE events (None: all) and return (connection, events)."""
    url = urlparse(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps(body | {"stream": True}), {"Content-Type": "application/json"})
    response = conn.getresponse()
    events = []
    while read_chunks is None or len(events) < read_chunks:
        line = response.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            events.append(line[6:].strip())
            if events[-1] == b"[DONE]":
                break
    return conn, response, events


def _wait_for(predicate, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def test_a_client_that_disconnects_frees_its_slot_within_a_second(long_llama):
    server = start_server(long_llama, "--parallel", "2", "--ctx-size", "32768", "--threads", "1")
    try:
        conn, response, events = _stream(server, {"prompt": "the", "max_tokens": 32000, "temperature": 0}, 3)
        assert len(events) == 3
        assert server.metrics()["edgellm_slots_busy"] == 1
        before = server.metrics().get('edgellm_requests_total{reason="cancelled"}', 0)
        conn.sock.shutdown(2)
        conn.close()
        took = _wait_for(lambda: server.metrics()["edgellm_slots_busy"] == 0, 5)
        assert took < 1.0
        assert server.metrics()['edgellm_requests_total{reason="cancelled"}'] == before + 1
        generated = server.metrics()["edgellm_tokens_generated_total"]
        time.sleep(0.3)
        assert server.metrics()["edgellm_tokens_generated_total"] == generated  # nothing runs for nobody
    finally:
        stop_server(server)


def test_a_full_queue_answers_503_and_a_late_request_504(long_llama):
    server = start_server(long_llama, "--parallel", "1", "--queue-size", "0", "--ctx-size", "32768", "--threads", "1",
                          "--timeout", "2")  # fmt: skip
    try:
        conn, response, events = _stream(server, {"prompt": "the", "max_tokens": 32000}, 2)
        code, body = server.post("/v1/completions", {"prompt": "a", "max_tokens": 2})
        assert code == 503 and "busy" in body["error"]["message"]
        extra, refused, _ = _stream(server, {"prompt": "a", "max_tokens": 2})  # refused before the stream starts
        assert refused.status == 503
        extra.close()
        assert server.metrics()["edgellm_requests_rejected_total"] == 2
        tail = response.read().decode()
        assert '"type":"timeout"' in tail and tail.rstrip().endswith("data: [DONE]")
        conn.close()
        code, body = server.post("/v1/completions", {"prompt": "the", "max_tokens": 32000})
        assert code == 504 and body["error"]["type"] == "timeout"
    finally:
        stop_server(server)


def test_streams_are_well_formed_under_32_concurrent_clients(tiny_server):
    """32 streaming clients at once on 4 slots: every stream has one id, text chunks, a finish reason and [DONE];
    no 5xx."""
    results = [None] * 32

    def client(i):
        conn, response, events = _stream(tiny_server, {"prompt": f"the {i}", "max_tokens": 8, "temperature": 0})
        results[i] = (response.status, events)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for status, events in results:
        assert status == 200
        assert events[-1] == b"[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert len({c["id"] for c in chunks}) == 1
        assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_concurrent_requests_get_their_own_answers(tiny_server):
    """Batched together, each request gets the text it gets alone (a sequence never sees another's cache)."""
    prompts = [f"the {w}" for w in ("cat", "sea", "hill", "in a", "on", "sat", "the", "a")]
    alone = [tiny_server.post("/v1/completions", {"prompt": p, "max_tokens": 10, "temperature": 0})[1]
             ["choices"][0]["text"] for p in prompts]  # fmt: skip
    together = [None] * len(prompts)

    def ask(i):
        together[i] = tiny_server.post("/v1/completions", {"prompt": prompts[i], "max_tokens": 10,
                                                            "temperature": 0})[1]["choices"][0]["text"]  # fmt: skip

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert together == alone


def test_a_second_chat_turn_recomputes_only_its_new_tokens(tiny_server):
    s = tiny_server
    turn1 = [{"role": "user", "content": "the cat sat on the hill"}]
    _, first = s.post("/v1/chat/completions", {"messages": turn1, "max_tokens": 8, "temperature": 0})
    answer = first["choices"][0]["message"]["content"]
    turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "and then?"}]
    before = s.metrics()
    _, second = s.post("/v1/chat/completions", {"messages": turn2, "max_tokens": 8, "temperature": 0})
    after = s.metrics()
    t = second["timings"]
    assert t["cached_n"] >= first["usage"]["prompt_tokens"]  # the whole first prompt, and most of the answer
    assert t["prompt_n"] == second["usage"]["prompt_tokens"] - t["cached_n"]
    new = second["usage"]["prompt_tokens"] - first["usage"]["prompt_tokens"] - first["usage"]["completion_tokens"]
    assert t["prompt_n"] <= new + 1  # the turn's own tokens (and the answer's last token, sampled but never fed)
    assert after["edgellm_prompt_cache_hits_total"] == before["edgellm_prompt_cache_hits_total"] + 1
    assert after["edgellm_prompt_cache_tokens_total"] - before["edgellm_prompt_cache_tokens_total"] == t["cached_n"]
    assert after["edgellm_prompt_tokens_total"] - before["edgellm_prompt_tokens_total"] == t["prompt_n"]


def test_health_is_503_until_the_model_is_loaded(tmp_path):
    """/health answers at once and says 503 while there is no model to serve (here: a file that fails to load, so
    the server stays up saying why); generation endpoints are 503 too, never a 500."""
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgellm", "serve", "-m", str(broken), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    server = LiveServer(f"http://127.0.0.1:{port}", proc)
    try:
        _wait_for(lambda: _answers(server), 30)
        code, body = server.get("/health")
        assert code == 503 and json.loads(body)["status"] in ("loading", "error")
        _wait_for(lambda: json.loads(server.get("/health")[1])["status"] == "error", 30)
        assert "broken.gguf" in json.loads(server.get("/health")[1])["error"]
        code, body = server.post("/v1/completions", {"prompt": "a"})
        assert code == 503 and "failed to load" in body["error"]["message"]
    finally:
        stop_server(server)


def _answers(server) -> bool:
    try:
        server.get("/health", timeout=1)
        return True
    except OSError:
        return False


def test_a_non_streamed_client_that_leaves_frees_its_slot(long_llama):
    """A client waiting for a whole (non-streamed) answer that hangs up cancels it too, while tokens keep coming."""
    server = start_server(long_llama, "--parallel", "2", "--ctx-size", "32768", "--threads", "1")
    try:
        url = urlparse(server.url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "the", "max_tokens": 32000}),
                     {"Content-Type": "application/json"})  # fmt: skip
        _wait_for(lambda: server.metrics()["edgellm_slots_busy"] == 1, 10)
        conn.sock.shutdown(2)
        conn.close()
        took = _wait_for(lambda: server.metrics()["edgellm_slots_busy"] == 0, 10)
        assert took < 1.0
        assert server.metrics()['edgellm_requests_total{reason="cancelled"}'] == 1
    finally:
        stop_server(server)


def test_requests_abandoned_in_the_queue_leave_it(long_llama):
    """Clients that gave up while waiting no longer fill the queue: the next request is queued, not refused."""
    server = start_server(long_llama, "--parallel", "1", "--queue-size", "1", "--ctx-size", "32768", "--threads", "1")
    try:
        busy, _, _ = _stream(server, {"prompt": "the", "max_tokens": 32000}, 2)
        waiting, _, _ = _stream(server, {"prompt": "a", "max_tokens": 2}, 0)  # queued: its headers are not sent yet
        waiting.sock.shutdown(2)
        waiting.close()
        time.sleep(0.5)
        late, response, _ = _stream(server, {"prompt": "a", "max_tokens": 2}, 0)
        assert response.status == 200  # admitted to the queue (the abandoned one was dropped)
        late.close()
        busy.close()
    finally:
        stop_server(server)
