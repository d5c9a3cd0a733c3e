"""The /v1 routes' pure logic, without a server: chat templates, request -> `mentallama` inputs, stop strings,
finish reasons, error shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tritonclient.grpc import service_pb2

from mentallama.prompts import wrap_chat
from mentallama_server.front_door.admission import Refused, Ticket
from mentallama_server.front_door.chat_template import ChatTemplate, TemplateError, llama2_prompt, load_chat_template
from mentallama_server.front_door.openai_api import (
    ApiError,
    Choices,
    Progress,
    chat_messages,
    check_fields,
    parse,
    upstream_fields,
)
from mentallama_server.front_door.openai_schema import ChatCompletionChunk, ChatCompletionRequest, CompletionRequest

CHECKPOINT = Path(__file__).resolve().parents[2] / "server" / "mentallama_server" / "checkpoints" / "mentallama-nano"
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi "},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Why?"}]  # fmt: skip

TICKET = Ticket(client="k", client_id="c", upstream_id="u", model="mentallama")


def chat(**fields) -> ChatCompletionRequest:
    return parse(ChatCompletionRequest, {"model": "mentallama", "messages": [{"role": "user", "content": "Hi"}],
                                         **fields})  # fmt: skip


def test_llama2_format_is_meta_s() -> None:
    assert llama2_prompt(CONVERSATION) == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] Why? [/INST]"
    )


def test_builtin_and_checkpoint_templates_agree_and_drop_the_leading_bos() -> None:
    shipped = load_chat_template(CHECKPOINT)
    assert shipped.source is not None and shipped.name == "checkpoint"
    builtin = ChatTemplate(None)
    assert shipped.render(CONVERSATION) == builtin.render(CONVERSATION)
    assert builtin.render(CONVERSATION).startswith("[INST] <<SYS>>")
    # One user message: exactly the SDK's chat prompt (which leaves BOS to the tokenizer too).
    assert shipped.render([{"role": "user", "content": "q"}]) == wrap_chat("q")
    assert builtin.render(CONVERSATION[:2]) == wrap_chat("Hi", "Be brief.")


def test_template_from_chat_template_jinja_wins_and_tokens_come_from_the_config(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": "<B>"}, "eos_token": "<E>",
                                                                "chat_template": "ignored"}))  # fmt: skip
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}{% for m in messages %}{{ m['content'] }}"
                                                  "{{ eos_token }}{% endfor %}")  # fmt: skip
    assert load_chat_template(tmp_path).render([{"role": "user", "content": "a"}]) == "a<E>"
    assert load_chat_template(tmp_path / "missing").source is None and load_chat_template(None).source is None


@pytest.mark.parametrize("template", [ChatTemplate(None), load_chat_template(CHECKPOINT)], ids=["builtin", "jinja"])
def test_roles_out_of_order_are_a_template_error(template: ChatTemplate) -> None:
    with pytest.raises(TemplateError, match="alternate"):
        template.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(TemplateError, match="role"):
        template.render([{"role": "tool", "content": "a"}])


def test_a_template_cannot_reach_python() -> None:
    evil = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(TemplateError):
        evil.render([{"role": "user", "content": "a"}])


def test_messages_content_parts_and_developer_role() -> None:
    req = chat(
        messages=[
            {"role": "developer", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ]
    )
    assert chat_messages(req) == [{"role": "system", "content": "sys"}, {"role": "user", "content": "a\nb"}]
    image = chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    with pytest.raises(ApiError) as caught:
        chat_messages(image)
    assert caught.value.param == "messages[0].content[0]"


def test_request_to_mentallama_inputs() -> None:
    fields = upstream_fields(chat(max_completion_tokens=9, max_tokens=3, temperature=0.7, seed=2**64 - 1,
                                  stop="###", presence_penalty=0.5, stream=True, top_k=5), "PROMPT")  # fmt: skip
    assert fields == {"text_input": "PROMPT", "max_tokens": 9, "stream": True, "exclude_input_in_output": True,
                      "return_num_input_tokens": True, "return_num_output_tokens": True, "temperature": 0.7,
                      "top_p": 1.0, "top_k": 5, "seed": 2**64 - 1, "presence_penalty": 0.5,
                      "stop_words": ["###"]}  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "sampled"),
    [({}, {}), ({"temperature": 0}, {}), ({"temperature": 0, "top_p": 0.5}, {}),
     ({"top_p": 0.5}, {"temperature": 1.0, "top_p": 0.5}), ({"temperature": 1.5}, {"temperature": 1.5, "top_p": 1.0})],
)  # fmt: skip
def test_greedy_unless_sampling_is_asked_for(fields, sampled) -> None:
    """No top_p and no top_k is greedy in TensorRT-LLM's semantics: a temperature alone must bring top_p 1."""
    got = upstream_fields(chat(**fields), "p")
    assert {k: got[k] for k in ("temperature", "top_p", "top_k") if k in got} == sampled
    assert got["max_tokens"] == 256 and got["stream"] is False


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"n": 5}, "n"), ({"logprobs": True}, "logprobs"), ({"top_logprobs": 2}, "top_logprobs"),
     ({"response_format": {"type": "json_object"}}, "response_format"), ({"logit_bias": {"1": 5}}, "logit_bias"),
     ({"tools": [{"type": "function"}]}, "tools"), ({"best_of": 2}, "best_of"), ({"ignore_eos": True}, "ignore_eos"),
     ({"stop": ["a", ""]}, "stop"), ({"stop": ["a"] * 17}, "stop"), ({"min_tokens": 300}, "min_tokens"),
     ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages[0].tool_calls")],
)  # fmt: skip
def test_fields_that_would_change_the_result_are_refused_by_name(fields, param) -> None:
    with pytest.raises(ApiError) as caught:
        check_fields(chat(**fields))
    assert caught.value.param == param and caught.value.status == 400 and param.split("[")[0] in caught.value.message


def test_harmless_values_and_common_client_fields_pass() -> None:
    check_fields(
        chat(
            n=1,
            logprobs=False,
            tools=[],
            tool_choice="none",
            response_format={"type": "text"},
            user="u",
            store=False,
            metadata={},
            service_tier="auto",
            parallel_tool_calls=True,
            logit_bias={},
        )
    )
    completion = parse(CompletionRequest, {"model": "m", "prompt": "p", "echo": True})
    with pytest.raises(ApiError, match="echo"):
        check_fields(completion)


@pytest.mark.parametrize(
    ("body", "param"),
    [({"model": "m"}, "messages"), ({"model": "m", "messages": []}, "messages"),
     ({"model": "m", "messages": [{"content": "x"}]}, "messages[0].role"),
     ({"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": -1}, "seed"),
     ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
     ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": 5}, "stop")],
)  # fmt: skip
def test_validation_errors_name_the_field(body, param) -> None:
    with pytest.raises(ApiError) as caught:
        parse(ChatCompletionRequest, body)
    assert caught.value.param == param and caught.value.message.startswith(param)


def test_error_shapes_and_statuses() -> None:
    error = ApiError("bad", 400, "temperature").body()
    assert error == {"error": {"message": "bad", "type": "invalid_request_error", "param": "temperature",
                               "code": None}}  # fmt: skip
    overloaded = ApiError.of(Refused("server overloaded: 3 requests in flight", 503, "UNAVAILABLE")).response()
    assert overloaded.status_code == 503 and overloaded.headers["retry-after"] == "1"
    assert json.loads(overloaded.body)["error"]["code"] == "service_unavailable"
    unauthenticated = ApiError.of(Refused("a valid API key is required", 401)).body()["error"]
    assert (unauthenticated["type"], unauthenticated["code"]) == ("authentication_error", "invalid_api_key")
    assert ApiError.of(Refused("too many", 429)).response().headers["retry-after"] == "1"
    from_model = ApiError.upstream("max_tokens is 5000, above the limit of 1024", "prompt")
    assert (from_model.status, from_model.param) == (400, "max_tokens")
    assert ApiError.upstream("text_input is 3000 tokens long; the limit is 1024", "prompt").param == "prompt"


def _response(text: str = "", n_out: int | None = None) -> service_pb2.ModelStreamInferResponse:
    message = service_pb2.ModelStreamInferResponse()
    if text:
        tensor = message.infer_response.outputs.add(name="text_output", datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(text.encode())
    if n_out is not None:
        tensor = message.infer_response.outputs.add(name="num_output_tokens", datatype="INT32", shape=[1, 1])
        tensor.contents.int_contents.append(n_out)
    return message


def test_stop_strings_are_held_back_and_dropped_from_the_end() -> None:
    progress = Progress(10, ("STOP", "##"))
    out = [progress.add(_response(t), TICKET) for t in ("ab S", "TO", "x #", "#y ST", "OP")]
    assert out == ["ab ", "", "STOx ", "##y ", ""]
    progress.add(_response(n_out=7), TICKET)
    assert progress.finish() == "" and progress.text == "ab STOx ##y " and progress.finish_reason() == "stop"


def test_finish_reasons_and_usage() -> None:
    assert Progress(4).finish_reason() == "stopped"  # the bare final of a stopped request: no counts
    full = Progress(4)
    full.add(_response("abc", 4), TICKET)
    assert full.finish_reason() == "length" and full.usage()["completion_tokens"] == 4
    error = Progress(4)
    failure = service_pb2.ModelStreamInferResponse(error_message="request u.1 failed")
    error.add(failure, Ticket("k", "mine", "u.1", "mentallama"))
    assert error.error == "request mine failed"


def test_stream_chunks_validate_against_the_documented_model() -> None:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "mentallama",
             "choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": None, "finish_reason": None}],
             "usage": None}  # fmt: skip
    assert ChatCompletionChunk.model_validate(chunk).choices[0].delta.content == "x"


# ---- n and best_of: several choices in one request ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"n": 0}, "n"), ({"n": -1}, "n"), ({"n": "2"}, "n"), ({"n": True}, "n"), ({"n": 1.5}, "n"),
     ({"best_of": 0}, "best_of"), ({"best_of": "3"}, "best_of")],
)  # fmt: skip
def test_n_and_best_of_must_be_positive_json_integers(fields, param) -> None:
    """Strict: "2" and true are not 2 (pydantic's lax mode would take them)."""
    with pytest.raises(ApiError) as caught:
        parse(CompletionRequest, {"model": "m", "prompt": "p", **fields})
    assert caught.value.param == param and caught.value.status == 400


@pytest.mark.parametrize(
    ("fields", "limit", "param", "words"),
    [({"n": 10**9}, 4, "n", "n is 1000000000; this server returns at most 4"),
     ({"n": 3}, 2, "n", "at most 2 choices"),
     ({"n": 3, "best_of": 2}, 4, "best_of", "best_of (2) must be >= n (3)"),
     ({"best_of": 5}, 4, "best_of", "best_of is 5; this server generates at most 4"),
     ({"n": 1, "best_of": 2, "stream": True}, 4, "best_of", "cannot be streamed")],
)  # fmt: skip
def test_choices_above_the_servers_limit_are_refused_naming_the_field_and_the_limit(fields, limit, param,
                                                                                    words) -> None:  # fmt: skip
    request = parse(CompletionRequest, {"model": "m", "prompt": "p", **fields})
    with pytest.raises(ApiError) as caught:
        check_fields(request, limit)
    assert (caught.value.param, caught.value.status) == (param, 400) and words in caught.value.message


def test_n_within_the_limit_passes_and_becomes_num_return_sequences() -> None:
    check_fields(chat(n=4), 4)
    check_fields(parse(CompletionRequest, {"model": "m", "prompt": "p", "n": 2, "best_of": 4}), 4)
    assert upstream_fields(chat(n=3), "p")["num_return_sequences"] == 3
    assert "return_log_probs" not in upstream_fields(chat(n=3), "p")
    assert "num_return_sequences" not in upstream_fields(chat(n=1), "p")
    ranked = upstream_fields(parse(CompletionRequest, {"model": "m", "prompt": "p", "best_of": 3}), "p")
    assert ranked["num_return_sequences"] == 3 and ranked["return_log_probs"] is True  # best_of ranks by them


def _sequence(text: str, index: int | None, n_out: int | None = None, n_in: int | None = None,
              cum: float | None = None) -> service_pb2.ModelStreamInferResponse:  # fmt: skip
    message = _response(text, n_out)
    outputs = message.infer_response.outputs
    for name, value, datatype in (("sequence_index", index, "INT32"), ("num_input_tokens", n_in, "INT32")):
        if value is not None:
            outputs.add(name=name, datatype=datatype, shape=[1, 1]).contents.int_contents.append(value)
    if cum is not None:
        outputs.add(name="cum_log_probs", datatype="FP32", shape=[1, 1]).contents.fp32_contents.append(cum)
    return message


def test_choices_follow_each_sequence_by_its_index_and_count_every_one() -> None:
    choices = Choices.of(2, 8, ("##",))
    got = [choices.add(_sequence(t, i), TICKET) for t, i in (("a #", 0), ("b", 1), ("#c", 0), ("d##", 1))]
    assert got == [(0, "a "), (1, "b"), (0, "##c"), (1, "d")]
    choices.add(_sequence("", 0, n_out=8, n_in=7), TICKET)
    choices.add(_sequence("", 1, n_out=3, n_in=7), TICKET)
    assert [p.finish() for p in choices.sequences] == ["", ""]  # sequence 1's "##" ended it: dropped
    assert [p.text for p in choices.sequences] == ["a ##c", "bd"]
    assert [p.finish_reason() for p in choices.sequences] == ["length", "stop"]
    assert choices.usage() == {"prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18}
    assert choices.best(2) == choices.sequences  # n choices: all, in order


def test_best_of_returns_the_highest_log_probability_per_token_first() -> None:
    choices = Choices.of(3, 8)
    for index, (n_out, cum) in enumerate(((2, -4.0), (8, -8.0), (4, -6.0))):  # per token -2, -1, -1.5
        choices.add(_sequence(f"s{index}", index, n_out=n_out, n_in=5, cum=cum), TICKET)
    assert [p.text for p in choices.best(2)] == ["s1", "s2"]
    assert choices.usage()["completion_tokens"] == 14  # every sequence generated counts


def test_a_sequence_index_out_of_range_is_a_server_error_not_a_lost_choice() -> None:
    choices = Choices.of(2, 8)
    assert choices.add(_sequence("x", 5), TICKET) == (0, "")
    assert choices.error is not None and "sequence_index 5" in choices.error
    assert ApiError.upstream(choices.error, "prompt").status == 500
