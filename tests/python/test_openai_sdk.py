"""The official OpenAI Python SDK against lhama: responses parse into the SDK's
types, and each error case raises the SDK's matching exception class."""

import signal
import time
import urllib.error
import urllib.request

import openai
import pytest


def client(server, key="unused"):
    return openai.OpenAI(base_url=server.base + "/v1", api_key=key, max_retries=0)


QUESTION = [{"role": "user", "content": "Qual a capital do Brasil?"}]


def test_chat_and_streaming_with_usage(server):
    c = client(server)
    whole = c.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=20, temperature=0)
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.prompt_tokens == 12
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(c.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=20, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == whole.choices[0].finish_reason


def test_completions_n_and_logprobs(server):
    c = client(server)
    r = c.completions.create(model="tiny", prompt="Olá", max_tokens=8, n=2, temperature=1.0, seed=3, logprobs=2)
    assert r.object == "text_completion"
    assert [ch.index for ch in r.choices] == [0, 1]
    for ch in r.choices:
        assert len(ch.logprobs.tokens) == len(ch.logprobs.token_logprobs) == 8
        assert all(len(t) <= 2 for t in ch.logprobs.top_logprobs)
    again = c.completions.create(model="tiny", prompt="Olá", max_tokens=8, n=2, temperature=1.0, seed=3)
    assert [ch.text for ch in again.choices] == [ch.text for ch in r.choices]

    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="tiny", prompt="Olá", max_tokens=8, temperature=0, stream=True))
    assert streamed == c.completions.create(model="tiny", prompt="Olá", max_tokens=8, temperature=0).choices[0].text


def test_chat_logprobs(server):
    r = client(server).chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4, temperature=0,
                                               logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 for t in content)


def test_error_classes(server):
    c = client(server)
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=[{"role": "system", "content": "x"}] + QUESTION)
    assert "alternate" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=100000)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=QUESTION, temperature=-1)
    assert e.value.param == "temperature"
    # An error inside a stream is reported, not swallowed: a template error
    # comes before the stream starts, as a plain 400.
    with pytest.raises(openai.BadRequestError):
        list(c.chat.completions.create(model="tiny", messages=[{"role": "tool", "content": "x"}], stream=True))


def test_auth_queue_and_size_errors(keyed_server):
    with pytest.raises(openai.AuthenticationError):
        client(keyed_server, "wrong").chat.completions.create(model="tiny", messages=QUESTION, max_tokens=2)
    ok = client(keyed_server, "secret")
    assert ok.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=2).choices
    # Two sequences can never fit a queue of one place: 400, not 429.
    with pytest.raises(openai.BadRequestError) as e:
        ok.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=2, n=2)
    assert e.value.param == "n"
    # A really full queue: one sequence running (--max-num-seqs 1), one waiting.
    running = ok.chat.completions.create(
        model="tiny", messages=QUESTION, max_tokens=400, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = iter(running)
    next(chunks)  # the role chunk
    next(chunks)  # a first token: its queue place is given back
    waiting = ok.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=2, stream=True)
    with pytest.raises(openai.RateLimitError):
        ok.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=2)
    running.close()
    waiting.close()
    with pytest.raises(openai.APIStatusError) as e:
        ok.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "a" * 200000}])
    assert e.value.status_code == 413


def test_a_draining_server_raises_internal_server_error(slow_server):
    c = client(slow_server)
    running = c.completions.create(model="tiny", prompt="Oi", max_tokens=100, stream=True,
                                   extra_body={"ignore_eos": True})
    next(iter(running))
    slow_server.proc.send_signal(signal.SIGTERM)
    # Wait until the server is draining, so the next request meets the drain.
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(slow_server.base + "/health")
        except urllib.error.HTTPError as err:
            if err.code == 503:
                break
        assert time.monotonic() < deadline, "the server did not start draining"
        time.sleep(0.01)
    with pytest.raises(openai.InternalServerError) as e:
        c.chat.completions.create(model="tiny", messages=QUESTION)
    assert e.value.status_code == 503
    assert "shutting down" in e.value.message
    running.close()
