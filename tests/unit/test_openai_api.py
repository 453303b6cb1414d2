"""The OpenAI API routes over ASGI, without Ray: the real Gateway with in-process
stand-ins (``gateway_doubles``: a Generator streaming "Hel", "lo"). The official ``openai``
client drives the deployed model API in tests/e2e/test_train_lm.py."""

from __future__ import annotations

import json

from gateway_doubles import post

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"


def _sse(r) -> list:
    lines = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]", r.text
    return [json.loads(line) for line in lines[:-1]]


def test_a_completion_with_usage(client, gateway, key):
    r = post(client, COMPLETIONS, {"model": "gpt", "prompt": "Say", "max_tokens": 5}, key)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "gpt:1"
    assert body["choices"] == [
        {"index": 0, "text": "Hello", "logprobs": None, "finish_reason": "length"}
    ]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert gateway.generator.asked == [("Say", 5, 1.0, None, None, None)]


def test_a_stop_sequence_ends_the_text_before_it_even_across_pieces(client, key):
    r = post(client, COMPLETIONS, {"model": "gpt", "prompt": "Say", "stop": ["ll"]}, key)
    assert r.json()["choices"][0] | {"index": 0} == {
        "index": 0,
        "text": "He",
        "logprobs": None,
        "finish_reason": "stop",
    }


def test_a_streamed_chat_ends_with_done_and_usage(client, gateway, key):
    body = {
        "model": "gpt:1",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "seed": 3,
        "n": 2,
    }
    r = post(client, CHAT, body, key)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = _sse(r)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    texts = {0: "", 1: ""}
    for c in chunks[:-1]:
        (choice,) = c["choices"]
        texts[choice["index"]] += choice["delta"].get("content", "")
    assert texts == {0: "Hello", 1: "Hello"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10
    prompt = "system: Be brief.\nuser: Hi\nassistant:"
    # temperature 0 is greedy (top_k 1); each choice its own seed
    assert sorted(gateway.generator.asked) == [
        (prompt, 256, 1.0, 1, 3, None),
        (prompt, 256, 1.0, 1, 4, None),
    ]


def test_a_chat_answer_is_an_assistant_message(client, key):
    body = {
        "model": "gpt",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    }
    r = post(client, CHAT, {**body, "max_completion_tokens": 4, "top_p": 0.9}, key)
    assert r.json()["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}


def test_errors_come_in_openais_shape(client, key):
    def error(body, given=key):
        r = post(client, COMPLETIONS, body, given)
        return r.status_code, r.json()["error"]

    status, err = error({"model": "gpt", "prompt": "x"}, "sk-wrong")
    assert status == 401 and err["type"] == "authentication_error" and err["message"]
    assert error({"model": "nope", "prompt": "x"})[0] == 404
    assert error({"model": "gpt:7", "prompt": "x"})[0] == 404
    status, err = error({"model": "digits", "prompt": "x"})
    assert status == 400 and "not a language model" in err["message"]
    for bad in [
        {"model": "gpt", "prompt": "x", "logprobs": 3},  # not offered
        {"model": "gpt", "prompt": "x", "temperature": 3},
        {"model": "gpt", "prompt": "x", "n": 9},
        {"model": "gpt", "prompt": ["a", "b", "c"], "n": 3},  # 9 streams
        {"model": "gpt", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]},
        {"model": "gpt", "prompt": "x", "max_tokens": 100_000},  # the Generator's limit
        {"model": "gpt"},
    ]:
        status, err = error(bad)
        assert status == 400 and err["type"] == "invalid_request_error", (bad, err)


def test_the_model_list_is_also_openais(client, key):
    listed = client.get("/v1/models", headers={"X-API-Key": key}).json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == [m["name"] for m in listed["models"]]


def test_a_generation_failing_midway(client, gateway, key):
    gateway.generator.error = RuntimeError("replica lost")
    body = {"model": "gpt", "prompt": "x"}
    r = post(client, COMPLETIONS, {**body, "stream": True}, key)
    events = [e[6:] for e in r.text.split("\n\n") if e.startswith("data: ")]
    assert r.status_code == 200 and "[DONE]" not in events  # told in the stream, at its end
    assert json.loads(events[-1])["error"]["type"] == "server_error"
    r = post(client, COMPLETIONS, body, key)
    assert r.status_code >= 500 and r.json()["error"]["type"] == "server_error"
    assert all(s.cancelled for s in gateway.generator.streams)
