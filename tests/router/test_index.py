"""KvIndex against a brute-force reference under random event sequences, plus the cases that matter by name."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.events import StoredBlock
from router.index import CHILDREN, MASK, KvIndex

WORKERS = ("w0", "w1", "w2")


class Reference:
    """Per worker: block_hash -> tokens_hash path from the root. A worker matches the longest query prefix all of
    whose prefixes it holds as paths."""

    def __init__(self) -> None:
        self.paths: dict[str, dict[int, tuple[int, ...]]] = {w: {} for w in WORKERS}

    def store(self, worker: str, parent: int | None, blocks: list[StoredBlock]) -> bool:
        table = self.paths[worker]
        if parent is not None and parent not in table:
            return False
        path = () if parent is None else table[parent]
        for block in blocks:
            path = (*path, block.tokens_hash)
            table[block.block_hash] = path
        return True

    def matches(self, query: list[int]) -> dict[str, int]:
        scores = {}
        for worker, table in self.paths.items():
            held = set(table.values())
            depth = 0
            while depth < len(query) and tuple(query[: depth + 1]) in held:
                depth += 1
            if depth:
                scores[worker] = depth
        return scores


def assert_no_dead_leaves(index: KvIndex) -> None:
    """Every node except the root is held by a worker or leads to one that is (nothing leaks)."""
    stack = list(index.root[CHILDREN].values())
    while stack:
        node = stack.pop()
        assert node[MASK] or node[CHILDREN]
        stack.extend(node[CHILDREN].values())


tokens_hashes = st.integers(0, 3)  # a tiny alphabet makes shared prefixes and collisions common
block_hashes = st.integers(0, 11)
stored = st.lists(st.builds(StoredBlock, block_hashes, tokens_hashes), min_size=1, max_size=4)
operations = st.lists(st.one_of(
    st.tuples(st.just("store"), st.sampled_from(WORKERS), st.none() | block_hashes, stored),
    st.tuples(st.just("remove"), st.sampled_from(WORKERS), st.lists(block_hashes, max_size=3)),
    st.tuples(st.just("clear"), st.sampled_from(WORKERS)),
    st.tuples(st.just("remove_worker"), st.sampled_from(WORKERS)),
), max_size=40)
queries = st.lists(st.lists(tokens_hashes, min_size=1, max_size=5), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(operations, queries)
def test_index_agrees_with_brute_force_reference(ops, extra_queries):
    index, ref = KvIndex(), Reference()
    for op in ops:
        match op:
            case ("store", worker, parent, blocks):
                assert index.store(worker, parent, blocks) == ref.store(worker, parent, blocks)
            case ("remove", worker, hashes):
                index.remove(worker, hashes)
                for h in hashes:
                    ref.paths[worker].pop(h, None)
            case ("clear", worker) | ("remove_worker", worker):
                getattr(index, op[0])(worker)
                ref.paths[worker].clear()
        for worker in WORKERS:
            assert index.blocks_of(worker) == ref.paths[worker]
            assert index.num_blocks(worker) == len(ref.paths[worker])
        all_paths = {p for table in ref.paths.values() for p in table.values()}
        for query in [*extra_queries, *(list(p) + [0, 1] for p in all_paths)]:
            assert index.find_matches(query) == ref.matches(query), query
    assert_no_dead_leaves(index)
    for worker in WORKERS:
        index.remove_worker(worker)
    assert not index.root[CHILDREN]


def chain(worker_blocks: list[tuple[int, int]]) -> list[StoredBlock]:
    return [StoredBlock(block_hash, tokens_hash) for block_hash, tokens_hash in worker_blocks]


def test_matches_count_contiguous_prefix_per_worker():
    index = KvIndex()
    index.store("a", None, chain([(1, 10), (2, 20), (3, 30)]))
    index.store("b", None, chain([(7, 10), (8, 20)]))
    index.store("c", None, chain([(9, 99)]))
    assert index.find_matches([10, 20, 30, 40]) == {"a": 3, "b": 2}
    assert index.find_matches([10, 21]) == {"a": 1, "b": 1}
    assert index.find_matches([11]) == {} and index.find_matches([]) == {}


def test_evicted_middle_block_cuts_the_match_but_keeps_the_tail_for_others():
    index = KvIndex()
    index.store("a", None, chain([(1, 10), (2, 20), (3, 30)]))
    index.store("b", None, chain([(4, 10), (5, 20), (6, 30)]))
    index.remove("a", [2])
    assert index.find_matches([10, 20, 30]) == {"a": 1, "b": 3}
    assert index.store("a", 2, chain([(9, 40)])) is False  # parent gone for this worker: event skipped


def test_unknown_parent_is_refused_and_restore_at_new_place_moves_the_block():
    index = KvIndex()
    assert index.store("a", 42, chain([(1, 10)])) is False
    index.store("a", None, chain([(1, 10)]))
    index.store("a", None, chain([(1, 11)]))  # the same block hash now stands for another block
    assert index.find_matches([10]) == {} and index.find_matches([11]) == {"a": 1}
    assert index.num_blocks("a") == 1


def test_worker_slots_are_reused_after_removal():
    index = KvIndex()
    for n in range(70):  # beyond 64 workers: masks are Python ints, no width limit
        index.store(f"w{n}", None, chain([(1, n % 2)]))
    assert len(index.find_matches([0])) == 35
    index.remove_worker("w0")
    index.store("new", None, chain([(5, 0)]))
    scores = index.find_matches([0])
    assert "w0" not in scores and scores["new"] == 1 and len(scores) == 35
