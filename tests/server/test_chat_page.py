"""The chat page at / driven in headless Chromium (playwright) against a live server: it streams and assembles the
real answer, sends the whole conversation, shows the server's errors, stops, and sends the API key. Debian's chromium
is used as is; nothing is downloaded (no `playwright install`)."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
QUESTION = "What is the capital of France?"

sync_api = pytest.importorskip("playwright.sync_api", reason="the chat page tests drive Chromium with playwright")
if shutil.which(CHROMIUM) is None:
    pytest.skip(f"the chat page tests need Chromium at {CHROMIUM} (apt install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()  # fresh localStorage per test
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def post_json(server, path: str, body: dict, timeout: float = 60.0) -> tuple[int, dict]:
    req = urllib.request.Request(server.url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def chat_bodies(page) -> list[dict]:
    """The JSON bodies the page posts to /v1/chat/completions, in order (filled as requests leave)."""
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
    return bodies


def open_chat(page, server, temperature: float | None = None, max_tokens: int | None = None) -> None:
    page.goto(server.url + "/")
    # Record each state the page passes through: a short answer can go busy and back to idle between two polls.
    page.evaluate("""() => {
        window.__states = [];
        new MutationObserver(() => window.__states.push(document.body.dataset.state))
            .observe(document.body, {attributes: true, attributeFilter: ["data-state"]});
    }""")
    if temperature is not None:
        page.fill("#temperature", str(temperature))
    if max_tokens is not None:
        page.fill("#max-tokens", str(max_tokens))


def ask(page, text: str, enter: bool = False, timeout_ms: float = 60_000) -> None:
    """Send `text` (the Send button, or Enter in the prompt) and wait until the page was busy and is idle again."""
    page.evaluate("() => { window.__states = []; }")
    page.fill("#prompt", text)
    if enter:
        page.press("#prompt", "Enter")
    else:
        page.click("#send")
    page.wait_for_function("() => window.__states.includes('busy') && document.body.dataset.state === 'idle'",
                           timeout=timeout_ms)  # fmt: skip


def last_answer(page):
    return page.locator("#messages .message.assistant").last


@pytest.mark.real_model
def test_page_streams_the_same_answer_as_a_direct_request(page, smollm2_server):
    open_chat(page, smollm2_server, temperature=0, max_tokens=24)
    ask(page, QUESTION)
    answer = last_answer(page)
    shown = answer.locator(".content").text_content()
    speed = answer.locator(".speed").text_content()

    status, direct = post_json(smollm2_server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 24})  # fmt: skip
    assert status == 200, direct
    expected = direct["choices"][0]["message"]["content"]
    assert expected.strip(), "the model gave an empty answer; the comparison would prove nothing"
    assert shown == expected
    assert page.locator("#messages .error").count() == 0
    assert re.search(r"\d+(\.\d+)? tokens/s", speed), speed
    assert f"{direct['usage']['completion_tokens']} tokens" in speed  # the count comes from the usage chunk
    assert re.search(r"first token \d+ ms", speed), speed


@pytest.mark.real_model
def test_stop_cancels_a_real_stream_and_frees_its_slot(page, smollm2_server):
    open_chat(page, smollm2_server, max_tokens=800)
    page.fill("#prompt", "Write a long story about a dragon.")
    page.click("#send")
    page.wait_for_function("document.querySelector('#messages .message.assistant .content').textContent.length > 10")
    page.click("#stop")
    page.wait_for_function("document.body.dataset.state === 'idle'", timeout=5_000)
    answer = last_answer(page)
    assert answer.locator(".content").text_content()  # the part streamed so far stays
    assert "stopped" in answer.locator(".speed").text_content()

    deadline = time.monotonic() + 10
    while json.loads(smollm2_server.get("/health")[1])["slots_processing"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert json.loads(smollm2_server.get("/health")[1])["slots_processing"] == 0  # the server cancelled it


def test_page_shows_the_model_and_defaults(page, tiny_server):
    status, models = tiny_server.get("/v1/models")
    assert status == 200
    open_chat(page, tiny_server)
    sync_api.expect(page.locator("#model")).to_have_text(json.loads(models)["data"][0]["id"])
    assert page.input_value("#temperature") == "0.8"
    assert page.input_value("#max-tokens") == "256"
    assert page.evaluate("document.body.dataset.state") == "idle"


def test_second_turn_sends_the_whole_conversation(page, tiny_server):
    bodies = chat_bodies(page)
    open_chat(page, tiny_server, max_tokens=8)
    first = 'Hello <b>there</b> <img src=x onerror="document.body.dataset.hacked = 1">'
    ask(page, first)
    first_answer = last_answer(page).locator(".content").text_content()

    page.fill("#prompt", "Second turn,")
    page.press("#prompt", "Shift+Enter")  # a newline, not a send
    page.keyboard.type("two lines.")
    assert page.input_value("#prompt") == "Second turn,\ntwo lines."
    assert len(bodies) == 1
    page.evaluate("() => { window.__states = []; }")
    page.press("#prompt", "Enter")
    page.wait_for_function("() => window.__states.includes('busy') && document.body.dataset.state === 'idle'")

    assert len(bodies) == 2
    assert bodies[0]["stream"] is True and bodies[0]["stream_options"] == {"include_usage": True}
    assert bodies[0]["temperature"] == 0.8 and bodies[0]["max_tokens"] == 8
    assert bodies[1]["messages"] == [{"role": "user", "content": first},
                                     {"role": "assistant", "content": first_answer},
                                     {"role": "user", "content": "Second turn,\ntwo lines."}]  # fmt: skip
    # Text is shown as text: the markup in the prompt made no elements and ran nothing.
    user = page.locator("#messages .message.user .content").first
    assert user.text_content() == first
    assert page.locator("#messages b, #messages img").count() == 0
    assert page.evaluate("document.body.dataset.hacked") is None
    assert page.locator("#messages .message.assistant").count() == 2
    assert page.locator("#messages .message.assistant .speed").count() == 2

    page.click("#new-chat")
    assert page.locator("#messages .message").count() == 0
    page.fill("#system", "Be brief.")
    ask(page, "Fresh start")
    assert bodies[2]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Fresh start"},
    ]


def test_server_error_is_shown_and_the_failed_turn_is_not_resent(page, tiny_server):
    status, direct = post_json(tiny_server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 100000})  # fmt: skip
    assert status == 400, direct
    bodies = chat_bodies(page)
    open_chat(page, tiny_server, max_tokens=100000)
    ask(page, QUESTION)

    error = page.locator("#messages .error")
    assert error.count() == 1
    assert direct["error"]["message"] in error.text_content()
    assert page.input_value("#prompt") == QUESTION  # given back for a retry

    page.fill("#max-tokens", "8")
    ask(page, QUESTION)
    assert bodies[1]["messages"] == [{"role": "user", "content": QUESTION}]
    assert last_answer(page).locator(".error").count() == 0
    assert last_answer(page).locator(".speed").count() == 1


def test_stop_aborts_the_request(page, tiny_server):
    bodies = chat_bodies(page)
    open_chat(page, tiny_server, max_tokens=8)
    page.route("**/v1/chat/completions", lambda route: None)  # held: the answer never comes
    page.fill("#prompt", "Wait for it")
    page.click("#send")
    page.wait_for_function("document.body.dataset.state === 'busy'")
    page.click("#stop")
    page.wait_for_function("document.body.dataset.state === 'idle'", timeout=5_000)
    assert "stopped" in last_answer(page).locator(".speed").text_content()
    assert page.locator("#messages .error").count() == 0

    page.unroute("**/v1/chat/completions")
    ask(page, "Now answer")
    roles = [m["role"] for m in bodies[-1]["messages"]]
    assert roles == ["user", "assistant", "user"]  # the stopped turn stays in the conversation


def test_api_key_is_kept_and_sent_as_a_bearer_token(page, tiny_server):
    open_chat(page, tiny_server)
    page.fill("#api-key", "sk-test-123")
    page.reload()
    assert page.input_value("#api-key") == "sk-test-123"

    requests = []
    page.on("request", lambda r: requests.append(r) if r.url.endswith("/v1/chat/completions") else None)
    open_chat(page, tiny_server, max_tokens=4)
    ask(page, "Hi")
    page.fill("#api-key", "")
    ask(page, "Hi again")
    auth = [r.all_headers().get("authorization") for r in requests]
    assert auth == ["Bearer sk-test-123", None]
    assert page.evaluate("localStorage.getItem('edgellm.apiKey')") is None
