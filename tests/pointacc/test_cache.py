import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pointacc import _core
from pointacc.config import Config
from pointacc.units import memory


def test_textbook_sequences():
    # 3-way fully associative: LRU keeps the recently used 0, FIFO evicts it (the oldest arrival).
    seq = np.array([0, 1, 2, 0, 3, 0])
    assert _core.cache_hits(seq, 1, 3, "lru") == 2
    assert _core.cache_hits(seq, 1, 3, "fifo") == 1
    # Direct-mapped with 4 sets: 0 and 4 collide in set 0 and evict each other.
    assert _core.cache_hits(np.array([0, 4, 0, 4, 1, 1]), 4, 1, "direct") == 1
    # Belady's anomaly: FIFO with 4 lines misses more than with 3 on this sequence.
    belady = np.array([1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5])
    assert len(belady) - _core.cache_hits(belady, 1, 3, "fifo") == 9
    assert len(belady) - _core.cache_hits(belady, 1, 4, "fifo") == 10
    # A loop one line larger than an LRU cache misses every time.
    loop = np.tile(np.arange(5), 10)
    assert _core.cache_hits(loop, 1, 4, "lru") == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=300), st.integers(1, 30))
def test_lru_misses_never_increase_with_capacity(lines, capacity):
    seq = np.array(lines)
    smaller = len(seq) - _core.cache_hits(seq, 1, capacity, "lru")
    larger = len(seq) - _core.cache_hits(seq, 1, capacity + 1, "lru")
    assert larger <= smaller


def test_gather_cache_orders():
    # Three offsets over 8 outputs; output-major visits 0,1,2 for output 0 then 1,2,3 ... (a sliding window).
    outs = np.tile(np.arange(8, dtype=np.int32), 3)
    ins = np.concatenate([np.arange(8), np.arange(8) + 1, np.arange(8) + 2]).astype(np.int32)
    accesses, hits_output = _core.gather_cache(ins, outs, 8, "output", 1, 1, 3, "lru")
    _, hits_offset = _core.gather_cache(ins, outs, 8, "offset", 1, 1, 3, "lru")
    assert accesses == 24
    assert hits_output == 24 - 10  # only the 10 distinct rows miss
    assert hits_offset == 0  # each offset sweep evicts what the next one needs


def test_memory_gather_without_caching_reads_every_row():
    config = Config()
    ins = np.arange(100, dtype=np.int32)
    cached = memory.gather(config, 100, 16, ins, ins, 100)
    uncached = memory.gather(config.replace(**{"memory.caching": False}), 100, 16, ins, ins, 100)
    assert uncached.dram_read_bytes == 100 * 16 * config.array.element_bytes
    assert cached.dram_read_bytes <= uncached.dram_read_bytes
