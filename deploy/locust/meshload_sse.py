"""Reading OpenAI-style SSE streams as they arrive: time to first token and inter-token latency."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass


@dataclass
class StreamResult:
    start_s: float  # clock() when the request was sent; every *_s below is on the same clock
    first_token_s: float | None = None  # first event with non-empty text
    last_token_s: float | None = None
    done_s: float | None = None  # `data: [DONE]`
    num_events: int = 0
    completion_tokens: int | None = None  # from the usage event (stream_options.include_usage)
    text: str = ""
    error: str | None = None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.start_s

    @property
    def itl_s(self) -> float | None:
        """Mean gap between output tokens: (last - first) / (tokens - 1); events may carry several tokens."""
        tokens = self.completion_tokens
        if not tokens or tokens < 2 or self.first_token_s is None or self.last_token_s is None:
            return None
        return (self.last_token_s - self.first_token_s) / (tokens - 1)

    @property
    def total_s(self) -> float | None:
        return None if self.done_s is None else self.done_s - self.start_s


def event_text(event: dict) -> str:
    """The text an event adds: chat `choices[0].delta.content` or completion `choices[0].text`."""
    choices = event.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    return (delta.get("content") if delta is not None else choice.get("text")) or ""


def read_sse(lines: Iterable[bytes], start_s: float, clock: Callable[[], float] = time.perf_counter) -> StreamResult:
    """Consume `data:` lines until [DONE]; an error event, a bad event or a missing [DONE] sets `error`."""
    result = StreamResult(start_s)
    for raw in lines:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        payload, now = line[5:].strip(), clock()
        if payload == b"[DONE]":
            result.done_s = now
            break
        result.num_events += 1
        try:
            event = json.loads(payload)
        except ValueError:
            result.error = f"undecodable event {payload[:80]!r}"
            return result
        if "error" in event:
            result.error = f"error event: {event['error'].get('message', event['error'])}"
            return result
        _apply(result, event, now)
    if result.done_s is None:
        result.error = "stream ended without [DONE]"
    elif result.first_token_s is None:
        result.error = "stream had no text"
    return result


def _apply(result: StreamResult, event: dict, now: float) -> None:
    text = event_text(event)
    if text:
        if result.first_token_s is None:
            result.first_token_s = now
        result.last_token_s = now
        result.text += text
    usage = event.get("usage")
    if usage:
        result.completion_tokens = usage.get("completion_tokens")


def response_lines(response) -> Iterator[bytes]:
    """Lines of a locust FastResponse body as they arrive.

    geventhttpclient's read(n) waits for n bytes, which would delay the first token; readline(b"\\n") returns as soon
    as one line is buffered.
    """
    raw = response._response  # HTTPSocketPoolResponse
    while True:
        line = raw.readline(b"\n")
        if not line:
            return
        yield line
