"""Bounded shutdown and broker loss of a worker process: drain timeout, dead NATS, a second signal, give-up, health."""

from __future__ import annotations

import signal

from protocol.work import Final
from shell.bus import EmbeddedNats, free_port
from shell.process import EXIT_BROKER_LOST, EXIT_DRAIN_TIMEOUT, EXIT_OK
from tests.workers.workerproc import WorkerProcess, busy_worker, requester, send_to, until_terminal

DRAIN_TIMEOUT_S = 10.0


async def test_sigterm_with_nats_gone_cuts_in_flight_work_and_exits_within_the_drain_timeout():
    server = EmbeddedNats(port=None).start()
    try:
        async with busy_worker(server.url, DRAIN_TIMEOUT_S) as (worker, _):
            server.process.kill()
            server.process.wait()
            worker.signal(signal.SIGTERM)
            # no one can receive the rest of that answer: the worker cuts it rather than wait for the broker
            assert await worker.exit_code(DRAIN_TIMEOUT_S) == EXIT_DRAIN_TIMEOUT
    finally:
        server.stop()


async def test_drain_timeout_ends_in_flight_requests_with_a_final_message_and_exit_code_4(nats_server):
    async with busy_worker(nats_server.url, 0.5) as (worker, stream):
        worker.signal(signal.SIGTERM)
        final = await until_terminal(stream)
        assert isinstance(final, Final) and final.finish_reason == "cancelled"
        assert await worker.exit_code(DRAIN_TIMEOUT_S) == EXIT_DRAIN_TIMEOUT


async def test_second_sigterm_exits_at_once_while_draining(nats_server):
    async with busy_worker(nats_server.url, 600) as (worker, _):
        worker.signal(signal.SIGTERM)
        body = await worker.wait_status("draining")
        assert body["active"] == 1 and not body["healthy"]
        worker.signal(signal.SIGTERM)
        assert await worker.exit_code(30) == 128 + signal.SIGTERM  # far inside the 600 s drain


async def test_worker_gives_up_on_unreachable_nats_with_exit_3_and_health_says_so():
    server = EmbeddedNats(port=None).start()
    worker = WorkerProcess(server.url, "mocker", "--nats-give-up-after", "3")
    try:
        await worker.wait_status("serving")
        server.process.kill()
        server.process.wait()
        body = await worker.wait_status("disconnected", 30)  # while it retries, before it gives up
        assert body["nats"] is False and body["healthy"] is False
        assert await worker.exit_code(60) == EXIT_BROKER_LOST
    finally:
        worker.close()
        server.stop()


async def test_worker_reconnects_by_default_and_serves_again():
    server = EmbeddedNats(port=None).start()
    port = server.port
    worker = WorkerProcess(server.url, "mocker", "--speedup-ratio", "inf")
    try:
        worker_id = (await worker.wait_status("serving"))["worker_id"]
        server.process.kill()
        server.process.wait()
        await worker.wait_status("disconnected", 30)
        server.stop()
        server = EmbeddedNats(port=port).start()
        assert server.port == port
        await worker.wait_status("serving", 60)
        async with requester(server.url, worker.namespace) as req:
            final = await until_terminal(await send_to(req, worker_id, "r-again", max_tokens=5))
        assert isinstance(final, Final) and final.usage.completion_tokens == 5
    finally:
        worker.close()
        server.stop()


async def test_worker_that_never_reaches_nats_gives_up_in_one_line():
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    worker = WorkerProcess(url, "mocker", "--nats-give-up-after", "1")
    try:
        assert await worker.exit_code(60) == EXIT_BROKER_LOST
        lines = [line for line in worker.stderr().splitlines() if not line.startswith("{")]  # WARNING logs are JSON
        assert lines == [f"diffmesh: NATS {url} unreachable for 1 s (--nats-give-up-after)"]
    finally:
        worker.close()


async def test_sigterm_of_an_idle_worker_exits_0(nats_server):
    worker = WorkerProcess(nats_server.url, "mocker")
    try:
        await worker.wait_status("serving")
        worker.signal(signal.SIGTERM)
        assert await worker.exit_code(DRAIN_TIMEOUT_S) == EXIT_OK
    finally:
        worker.close()
