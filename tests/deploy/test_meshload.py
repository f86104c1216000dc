"""deploy/locust helpers: SSE timing (TTFT, ITL) and Mooncake prompts that share prefixes like the trace."""

from __future__ import annotations

import json

import pytest

from tests.deploy.composekit import import_deploy_module

sse = import_deploy_module("locust/meshload_sse.py")
trace = import_deploy_module("locust/meshload_trace.py")


def _events(*events: dict | str) -> list[bytes]:
    return [f"data: {e if isinstance(e, str) else json.dumps(e)}\n".encode() for e in events] + [b"\n"]


def _chat(text: str) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


def test_read_sse_times_first_token_and_mean_gap_between_tokens():
    lines = _events({"choices": [{"delta": {"role": "assistant", "content": ""}}]}, _chat("a"), _chat(" b c"),
                    _chat(" d"), {"choices": [], "usage": {"completion_tokens": 4}}, "[DONE]")
    ticks = iter([1.0, 1.5, 2.0, 2.5, 3.5, 3.6])  # one clock reading per data line
    result = sse.read_sse(lines, start_s=0.5, clock=lambda: next(ticks))
    assert result.error is None and result.text == "a b c d" and result.completion_tokens == 4
    assert result.ttft_s == 1.0  # first non-empty text at 1.5
    assert result.itl_s == pytest.approx((2.5 - 1.5) / 3)  # events may carry several tokens
    assert result.total_s == pytest.approx(3.1)


def test_read_sse_reads_completion_text_events():
    result = sse.read_sse(_events({"choices": [{"text": "hi"}]}, "[DONE]"), start_s=0.0, clock=lambda: 1.0)
    assert result.text == "hi" and result.ttft_s == 1.0 and result.itl_s is None  # no usage event: no ITL


@pytest.mark.parametrize(("events", "error"), [
    ((_chat("a"),), "stream ended without [DONE]"),
    (({"error": {"message": "worker lost"}}, "[DONE]"), "error event: worker lost"),
    (("{not json", "[DONE]"), "undecodable event"),
    (({"choices": []}, "[DONE]"), "stream had no text"),
])
def test_read_sse_reports_broken_streams(events, error):
    assert sse.read_sse(_events(*events), start_s=0.0).error.startswith(error)


def _request(hash_ids, input_length):
    return trace.TraceRequest(tuple(hash_ids), input_length, 10, 0)


def test_trace_prompts_share_exactly_the_blocks_their_hash_ids_share():
    first = trace.prompt_for(_request([0, 1, 2], 3 * 512), words_per_block=8).split()
    second = trace.prompt_for(_request([0, 1, 7], 3 * 512), words_per_block=8).split()
    assert first[:16] == second[:16] and first[16:] != second[16:]
    assert trace.prompt_for(_request([5, 1], 1024), 8).split()[:8] != first[:8]  # same id, other position: no prefix


def test_trace_prompt_cuts_the_last_block_in_proportion_to_input_length():
    words = trace.prompt_for(_request([3, 4], 512 + 128), words_per_block=16).split()
    assert len(words) == 16 + 4
    assert words[16:] == list(trace.block_words(4, 16)[:4])  # a cut block is a prefix of the full block


def test_trace_prompt_keeps_only_the_leading_blocks_of_long_prompts():
    long = trace.prompt_for(_request(range(10), 10 * 512 - 100), words_per_block=4, max_blocks=3).split()
    assert long == trace.prompt_for(_request(range(3), 3 * 512), words_per_block=4).split()


def test_load_trace_reads_records_and_rejects_an_empty_file(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text('{"timestamp": 5, "input_length": 700, "output_length": 3, "hash_ids": [0, 1]}\n\n')
    assert trace.load_trace(path) == [trace.TraceRequest((0, 1), 700, 3, 5)]
    path.write_text("")
    with pytest.raises(ValueError, match="no trace records"):
        trace.load_trace(path)


def test_default_trace_path_points_at_the_shared_mooncake_trace():
    path = trace.default_trace_path()
    assert path.name == "mooncake_conversation_trace.jsonl" and path.parts[-4:-1] == ("shared", "data", "traces")
