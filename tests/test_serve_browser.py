"""The web chat page of `mftcoder serve` in a real browser: headless Debian Chromium driven by playwright, against
the real server on the tiny chat model. What the page shows is compared with the API's own greedy answers."""
import os

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium waits on network services that a closed network never answers.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (Debian package `chromium`; .ci/run installs it)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing (pip install -r requirements.txt)")

from serve_helpers import start_server  # noqa: E402

SYSTEM = "You are a coding assistant."
TURN_TOKENS = 48  # short turns keep the three-turn history well inside the tiny model's 512-token context
LONG_TOKENS = 470  # "hi" alone: the tiny model's greedy answer runs on to this length (about half a second)
ANSWERS = ".msg[data-role=assistant]"

# Records the length of the streaming answer at every DOM change the page makes while it streams.
RECORD_LENGTHS = """() => {
  window.lengths = [];
  new MutationObserver(() => {
    const all = document.querySelectorAll('.msg[data-role=assistant]');
    const el = all[all.length - 1];
    if (el && !el.dataset.done) window.lengths.push(el.textContent.length);
  }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
}"""

# The tiny model writes about a thousand tokens a second: a click from the test process would come after the answer
# has ended, so the page itself clicks Stop as soon as the first text of the answer shows.
STOP_AT_FIRST_TEXT = """() => {
  const log = document.getElementById('log');
  const watch = new MutationObserver(() => {
    const el = log.querySelector('.msg[data-role=assistant]:not([data-done])');
    if (el && el.textContent.length > 0) { watch.disconnect(); document.getElementById('stop').click(); }
  });
  watch.observe(log, {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def server(tiny_chat_model_dir):
    with start_server(tiny_chat_model_dir) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page_errors():
    return []


def open_chat(browser, url, page_errors):
    page = browser.new_context(viewport={"width": 1100, "height": 760}).new_page()
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    page.goto(url + "/")
    return page


def api_answer(url, messages, max_tokens):
    """The server's non-streaming greedy answer to the same messages."""
    model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
    body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
    resp = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["message"]["content"]


def say(page, text):
    page.fill("#input", text)
    page.click("#send")


def wait_answer(page, index):
    """The index-th assistant message, once its stream has ended."""
    page.wait_for_selector(f"{ANSWERS}[data-done=true] >> nth={index}", state="attached", timeout=60_000)
    return page.locator(ANSWERS).nth(index)


def test_chat_streams_keeps_history_and_stops(browser, server, page_errors, tmp_path):
    page = open_chat(browser, server.url, page_errors)
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    assert page.input_value("#model") == httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
    page.fill("#system", SYSTEM)
    page.fill("#temperature", "0")
    page.fill("#max_tokens", str(TURN_TOKENS))
    messages = [{"role": "system", "content": SYSTEM}]

    # Turn 1: the same text as the API's greedy answer.
    say(page, "Write a function that reverses a string.")
    first = wait_answer(page, 0)
    text1 = first.text_content()
    messages.append({"role": "user", "content": "Write a function that reverses a string."})
    assert text1 == api_answer(server.url, messages, TURN_TOKENS) != ""
    assert first.get_attribute("data-finish") in ("stop", "length")

    # Turn 2: the request carries the whole history.
    say(page, "Now write it in C.")
    text2 = wait_answer(page, 1).text_content()
    messages += [{"role": "assistant", "content": text1}, {"role": "user", "content": "Now write it in C."}]
    assert text2 == api_answer(server.url, messages, TURN_TOKENS)
    without_history = [messages[0], messages[-1]]
    assert text2 != api_answer(server.url, without_history, TURN_TOKENS), "history makes no difference to this model"

    shot = tmp_path / "chat.png"
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

    # New chat: the page is cleared and the next request carries no history.
    page.click("#new_chat")
    assert page.locator(".msg").count() == 0
    page.fill("#max_tokens", str(TURN_TOKENS))
    say(page, "Now write it in C.")
    assert wait_answer(page, 0).text_content() == api_answer(server.url, without_history, TURN_TOKENS)
    assert page_errors == []


def ask_for_a_long_answer(browser, server, page_errors, watcher: str):
    """A fresh page asks "hi" greedily for LONG_TOKENS tokens with `watcher` installed; (page, answer element,
    the API's own answer)."""
    page = open_chat(browser, server.url, page_errors)
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", str(LONG_TOKENS))
    page.evaluate(watcher)
    say(page, "hi")
    answer = wait_answer(page, 0)
    return page, answer, api_answer(server.url, [{"role": "user", "content": "hi"}], LONG_TOKENS)


def test_the_answer_streams_into_the_page(browser, server, page_errors):
    """A long answer (470 tokens, about half a second) shows up piece by piece, then equals the API's answer."""
    page, answer, full = ask_for_a_long_answer(browser, server, page_errors, RECORD_LENGTHS)
    text = answer.text_content()
    assert text == full
    partials = sorted({n for n in page.evaluate("window.lengths") if 0 < n < len(text)})
    assert len(partials) >= 2, f"the answer did not grow while streaming: lengths seen {partials}, final {len(text)}"
    assert page_errors == []


def test_stop_keeps_the_partial_answer(browser, server, page_errors):
    """Stop aborts a long answer and keeps the partial text, a prefix of the full greedy answer."""
    page, answer, full = ask_for_a_long_answer(browser, server, page_errors, STOP_AT_FIRST_TEXT)
    assert answer.get_attribute("data-finish") == "aborted"
    partial = answer.text_content()
    assert partial and full.startswith(partial) and len(partial) < len(full)
    assert page.is_enabled("#send") and not page.is_enabled("#stop")
    assert page_errors == []


def test_server_error_is_shown_and_the_failed_turn_dropped(browser, server, page_errors):
    page = open_chat(browser, server.url, page_errors)
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "0")
    say(page, "Write a function that reverses a string.")
    assert wait_answer(page, 0).get_attribute("data-finish") == "error"
    error = page.text_content("#error")
    assert error.startswith("HTTP 400: ") and "max_tokens" in error
    page.fill("#max_tokens", str(TURN_TOKENS))
    with page.expect_request("**/v1/chat/completions") as sent:
        say(page, "Now write it in C.")
    assert sent.value.post_data_json["messages"] == [{"role": "user", "content": "Now write it in C."}]
    assert page.text_content("#error") == ""
    answer = wait_answer(page, 1).text_content()
    assert answer == api_answer(server.url, [{"role": "user", "content": "Now write it in C."}], TURN_TOKENS)
    assert page_errors == []


def test_stream_reader_handles_split_events(browser, server, page_errors):
    """The page's reader with events cut anywhere: inside a line, between \\r and \\n, inside a UTF-8 character."""
    page = open_chat(browser, server.url, page_errors)
    result = page.evaluate("""async () => {
      const wire = 'data: {"choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}\\r\\n\\r\\n'
        + 'data: {"choices":[{"index":0,"delta":{"content":"héllo "},"finish_reason":null}]}\\n\\n'
        + 'data: {"choices":[{"index":0,"delta":{"content":"wörld 🙂"},"finish_reason":null}]}\\r\\n\\r\\n'
        + 'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\\n\\ndata: [DONE]\\n\\n';
      const bytes = new TextEncoder().encode(wire);
      const out = [];
      for (const step of [1, 2, 3, 7, 64, bytes.length]) {
        const body = new ReadableStream({ start(c) {
          for (let i = 0; i < bytes.length; i += step) c.enqueue(bytes.slice(i, i + step));
          c.close();
        } });
        const el = document.createElement('div');
        const finish = await readStream(new Response(body), el);
        out.push([el.textContent, finish]);
      }
      return out;
    }""")
    assert result == [["héllo wörld 🙂", "length"]] * 6
    assert page_errors == []


def test_api_key_field(browser, tiny_chat_model_dir, page_errors):
    """With --api_key the page shows the server's 401 message until the key is entered; the key is remembered."""
    with start_server(tiny_chat_model_dir, "--api_key", "sekret") as srv:
        page = open_chat(browser, srv.url, page_errors)
        page.wait_for_function("document.querySelector('#error').textContent.length > 0")
        assert "401" in page.text_content("#error") and "API key" in page.text_content("#error")
        assert page.locator("#model option").count() == 0
        page.fill("#api_key", "sekret")
        page.dispatch_event("#api_key", "change")
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        assert page.text_content("#error") == ""
        page.fill("#max_tokens", "4")
        say(page, "hi")
        assert wait_answer(page, 0).get_attribute("data-finish") in ("stop", "length")
        page.reload()
        assert page.input_value("#api_key") == "sekret"
        page.wait_for_function("document.querySelector('#model').options.length > 0")
    assert page_errors == []
