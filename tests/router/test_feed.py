"""Router event handling against simulated workers: gaps ask for dumps, lapses drop blocks, all under random loss."""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from protocol.events import KvEvent, KvEventBatch, KvStored, StoredBlock
from router.core import Router, RouterConfig
from tests.router.sim import SimWorker, card, heartbeat

WORKERS = ("w0", "w1", "w2")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """Drives a Router the way RouterService does, with a lossy event channel and delayed dump replies."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.router = Router(RouterConfig(lapse_factor=3.0), clock=self.clock)
        self.workers = {w: SimWorker(w) for w in WORKERS}
        self.online = set(WORKERS)  # heartbeating
        self.pending_dumps: set[str] = set()
        self.drop_next: set[str] = set()

    def deliver(self, worker: str, batch: KvEventBatch | None) -> None:
        if batch is None:
            return
        if worker in self.drop_next:
            self.drop_next.discard(worker)
            return
        if self.router.on_kv_events(batch):
            self.ask_dump(worker)

    def ask_dump(self, worker: str) -> None:
        self.router.begin_dump(worker)
        self.pending_dumps.add(worker)

    def serve_dump(self, worker: str) -> None:
        if worker in self.pending_dumps:
            self.pending_dumps.discard(worker)
            if self.router.apply_dump(self.workers[worker].dump()):
                self.ask_dump(worker)

    def tick(self, seconds: float = 0.3) -> None:
        self.clock.now += seconds
        for worker in sorted(self.online):
            beat = heartbeat(card(worker), self.workers[worker].last_event_id)
            if self.router.on_heartbeat(beat):
                self.ask_dump(worker)
        for worker in self.router.expire():
            self.pending_dumps.discard(worker)

    def settle(self) -> None:
        for _ in range(6):
            self.tick(1.1)
            for worker in list(self.pending_dumps):
                self.serve_dump(worker)

    def check_consistent(self, worker: str) -> None:
        """A live worker whose events are all applied and no dump is pending is indexed exactly."""
        router = self.router
        if worker not in router.tracker.workers or worker in self.pending_dumps:
            return
        if router.feed.last_event_id.get(worker, 0) == self.workers[worker].last_event_id:
            assert router.index.blocks_of(worker) == self.workers[worker].paths()


tokens = st.lists(st.integers(0, 3), min_size=1, max_size=4)
steps = st.lists(st.one_of(
    st.tuples(st.just("store"), st.sampled_from(WORKERS), st.integers(0, 50), tokens),
    st.tuples(st.just("remove"), st.sampled_from(WORKERS), st.integers(0, 50)),
    st.tuples(st.just("clear"), st.sampled_from(WORKERS)),
    st.tuples(st.just("drop_next"), st.sampled_from(WORKERS)),
    st.tuples(st.just("serve_dump"), st.sampled_from(WORKERS)),
    st.tuples(st.just("go_silent"), st.sampled_from(WORKERS)),
    st.tuples(st.just("come_back"), st.sampled_from(WORKERS)),
    st.tuples(st.just("tick"), st.floats(0.1, 4.0)),
), min_size=15, max_size=60)


def _pick(sim: SimWorker, n: int) -> int | None:
    hashes = sorted(sim.blocks)
    return hashes[n % len(hashes)] if hashes and n % (len(hashes) + 1) else None


@settings(max_examples=300, deadline=None)
@given(steps)
def test_router_index_converges_to_worker_caches_despite_gaps_and_lapses(ops):
    h = Harness()
    h.tick()
    for op in ops:
        match op:
            case ("store", worker, n, chain):
                h.deliver(worker, h.workers[worker].store(_pick(h.workers[worker], n), chain))
            case ("remove", worker, n):
                target = _pick(h.workers[worker], n)
                if target is not None:
                    h.deliver(worker, h.workers[worker].remove(target))
            case ("clear", worker):
                h.deliver(worker, h.workers[worker].clear())
            case ("drop_next", worker):
                h.drop_next.add(worker)
            case ("serve_dump", worker):
                h.serve_dump(worker)
            case ("go_silent", worker):
                h.online.discard(worker)
            case ("come_back", worker):
                h.online.add(worker)
            case ("tick", seconds):
                h.tick(seconds)
        for worker in WORKERS:
            h.check_consistent(worker)
            if worker not in h.router.tracker.workers:
                assert h.router.index.num_blocks(worker) == 0  # a lapsed worker holds nothing in the index
    event(f"dumps before settling: {min(h.router.stats.num_dumps, 2)}")
    h.online = set(WORKERS)
    h.drop_next.clear()
    h.settle()
    event(f"dumps in all: {min(h.router.stats.num_dumps, 3)}")
    for worker, sim in h.workers.items():
        assert h.router.index.blocks_of(worker) == sim.paths()
        for path in sim.paths().values():
            assert h.router.index.find_matches(list(path)).get(worker) == len(path)


def test_gap_asks_for_dump_and_buffers_later_events_until_it_arrives():
    h = Harness()
    h.tick()
    sim = h.workers["w0"]
    h.deliver("w0", sim.store(None, [1, 2]))
    h.drop_next.add("w0")
    h.deliver("w0", sim.store(None, [5]))  # lost
    h.deliver("w0", sim.store(None, [7]))  # id jumps: gap
    assert h.pending_dumps == {"w0"} and h.router.stats.num_gaps == 1
    h.deliver("w0", sim.store(None, [9]))  # arrives while the dump is pending: held back, not lost
    dump = sim.dump()
    h.deliver("w0", sim.store(None, [11]))  # newer than the dump
    h.pending_dumps.discard("w0")
    assert h.router.apply_dump(dump) is False
    assert h.router.index.blocks_of("w0") == sim.paths()
    assert h.router.stats.num_dumps == 1


def test_heartbeat_announcing_unseen_events_asks_for_dump_after_one_interval():
    h = Harness()
    h.tick()
    sim = h.workers["w1"]
    h.drop_next.add("w1")
    h.deliver("w1", sim.store(None, [3]))  # lost, and nothing follows it
    h.tick(0.5)  # the heartbeat shows an event we never saw: maybe still in flight
    h.tick(0.9)
    assert "w1" not in h.pending_dumps
    h.tick(0.2)  # a whole interval since it first showed
    assert "w1" in h.pending_dumps
    h.serve_dump("w1")
    assert h.router.index.find_matches([3]) == {"w1": 1}


def test_lapsed_heartbeat_drops_the_workers_blocks_and_return_restores_them():
    h = Harness()
    h.tick()
    h.deliver("w2", h.workers["w2"].store(None, [4, 4]))
    h.online.discard("w2")
    h.tick(3.5)
    assert "w2" not in h.router.tracker.workers and h.router.index.find_matches([4, 4]) == {}
    h.online.add("w2")
    h.tick()  # first heartbeat again, with events already published: dump
    assert "w2" in h.pending_dumps
    h.serve_dump("w2")
    assert h.router.index.find_matches([4, 4]) == {"w2": 2}


def test_events_from_unknown_workers_are_ignored_until_their_heartbeat():
    h = Harness()
    batch = KvEventBatch(worker_id="ghost", events=[KvEvent(event_id=1, data=KvStored(parent_hash=None,
                                                                                     blocks=[StoredBlock(1, 1)]))])
    assert h.router.on_kv_events(batch) is False
    assert h.router.index.num_blocks("ghost") == 0
    assert h.router.stats.applied[("batch", "unknown_worker")] == 1


def test_duplicate_events_are_counted_not_reapplied():
    h = Harness()
    h.tick()
    batch = h.workers["w0"].store(None, [1])
    h.deliver("w0", batch)
    h.deliver("w0", batch)
    assert h.router.stats.applied[("stored", "duplicate")] == 1
    assert h.router.stats.applied[("stored", "ok")] == 1
