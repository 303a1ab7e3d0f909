"""lab.runtime.podman.cgroup_memory: a memory cgroup's files read as cadvisor reads them (the real files of a
running container are read in tests/runtime/test_bench_memory.py)."""

from __future__ import annotations

from lab.runtime.podman import cgroup_memory

V1_STAT = """cache 90000
rss 4000
inactive_file 70
total_cache 91000000
total_rss 15000000
total_inactive_file 80000000
total_active_file 11000000
"""

V2_STAT = """anon 15000000
file 91000000
kernel 500000
inactive_file 80000000
active_file 11000000
"""


def test_v1_reads_the_hierarchical_rows() -> None:
    mem = cgroup_memory("107000000\n", V1_STAT, 1)
    assert (mem.usage, mem.anon, mem.file) == (107_000_000, 15_000_000, 91_000_000)
    assert mem.working_set == 107_000_000 - 80_000_000  # usage less total_inactive_file, not inactive_file


def test_v2_reads_memory_current_and_its_rows() -> None:
    mem = cgroup_memory("107000000", V2_STAT, 2)
    assert (mem.usage, mem.anon, mem.file, mem.working_set) == (107_000_000, 15_000_000, 91_000_000, 27_000_000)


def test_working_set_is_zero_when_inactive_exceeds_usage() -> None:
    # cadvisor's rule: the counters are read one after the other and can cross
    assert cgroup_memory("1000", "total_inactive_file 5000\n", 1).working_set == 0
