"""The memory budget: the tightest of the container's cgroup limit, MemAvailable and free GPU
memory, read from a fake cgroup tree (unit) and from this machine (whatever it has)."""
from __future__ import annotations

from pathlib import Path

import pytest

from bnwvad.runtime import memory
from bnwvad.runtime.memory import cgroup_limits, memory_budget

GIB = 1 << 30


def _v2_tree(tmp_path: Path, own: str, files: dict[str, dict[str, str]]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory\n")
    for rel, content in files.items():
        d = root / rel if rel else root
        d.mkdir(parents=True, exist_ok=True)
        for name, text in content.items():
            (d / name).write_text(text)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(f"0::{own}\n")
    return root, proc


def test_cgroup_v2_limit_minus_usage_plus_reclaimable_cache(tmp_path):
    root, proc = _v2_tree(tmp_path, "/box", {"box": {
        "memory.max": str(3 * GIB), "memory.current": str(GIB), "memory.stat": f"anon 1\ninactive_file {GIB // 4}\n"}})
    (lim,) = cgroup_limits(root, proc)
    assert lim.available == 3 * GIB - GIB + GIB // 4 and lim.total == 3 * GIB
    assert "cgroup v2 memory.max" in lim.source and str(root / "box") in lim.source


def test_a_parents_limit_binds_and_max_means_no_limit(tmp_path):
    root, proc = _v2_tree(tmp_path, "/a/b", {
        "a": {"memory.max": str(2 * GIB), "memory.current": str(GIB // 2)},
        "a/b": {"memory.max": "max", "memory.current": str(GIB // 2)}})
    (lim,) = cgroup_limits(root, proc)
    assert lim.available == 2 * GIB - GIB // 2 and str(root / "a") in lim.source


def test_inside_a_container_the_mount_root_holds_the_limit(tmp_path):
    # The process's own path (/docker/abc) is not mounted inside the container: the root is its cgroup.
    root, proc = _v2_tree(tmp_path, "/docker/abc", {"": {"memory.max": str(GIB), "memory.current": "0"}})
    (lim,) = cgroup_limits(root, proc)
    assert lim.available == GIB


def test_cgroup_v1_limit_and_its_unlimited_sentinel(tmp_path):
    root = tmp_path / "cgroup"
    d = root / "memory" / "job"
    d.mkdir(parents=True)
    (d / "memory.limit_in_bytes").write_text(str(3 * GIB))
    (d / "memory.usage_in_bytes").write_text(str(2 * GIB))
    (d / "memory.stat").write_text(f"total_inactive_file {GIB // 2}\n")
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712")   # v1's "no limit"
    proc = tmp_path / "proc_cgroup"
    proc.write_text("4:memory:/job\n1:cpu,cpuacct:/job\n")
    (lim,) = cgroup_limits(root, proc)
    assert lim.available == GIB + GIB // 2 and "cgroup v1" in lim.source


def test_the_tightest_limit_sets_the_budget_and_is_named(tmp_path, monkeypatch):
    root, proc = _v2_tree(tmp_path, "/box", {"box": {"memory.max": str(3 * GIB), "memory.current": "0"}})
    monkeypatch.setattr(memory, "host_limit", lambda: memory.Limit("MemAvailable (host)", 20 * GIB, 24 * GIB))
    b = memory_budget("cpu", root=root, proc_cgroup=proc)
    assert b.bytes == int(1.5 * GIB) and b.limit.source.startswith("cgroup v2")
    assert "cgroup v2 memory.max" in b.describe() and "50%" in b.describe()
    monkeypatch.setattr(memory, "host_limit", lambda: memory.Limit("MemAvailable (host)", GIB, 24 * GIB))
    b = memory_budget("cpu", fraction=1.0, root=root, proc_cgroup=proc)
    assert b.bytes == GIB and b.limit.source == "MemAvailable (host)"
    monkeypatch.setattr(memory, "gpu_limit", lambda device_id=0: memory.Limit("free GPU memory (device 0)", GIB // 8))
    assert memory_budget("cuda", root=root, proc_cgroup=proc).limit.source == "free GPU memory (device 0)"
    assert memory_budget("cpu", root=root, proc_cgroup=proc).limit.source == "MemAvailable (host)"


def test_nothing_readable_gives_a_stated_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "host_limit", lambda: None)
    b = memory_budget("cpu", root=tmp_path / "none", proc_cgroup=tmp_path / "none")
    assert b.bytes == 4 * GIB and "fixed 4 GiB" in b.limit.source
    with pytest.raises(ValueError, match="fraction"):
        memory_budget("cpu", fraction=0.0)


def test_this_machine(tmp_path):
    import psutil

    b = memory_budget("cpu")
    assert 0 < b.bytes <= psutil.virtual_memory().available
    assert b.bytes == int(b.limit.available * 0.5) and b.limit in b.limits


def test_a_process_budget_counts_what_the_process_holds(tmp_path, monkeypatch):
    root, proc = _v2_tree(tmp_path, "/box", {"box": {"memory.max": str(3 * GIB), "memory.current": str(GIB)}})
    monkeypatch.setattr(memory, "host_limit", lambda: memory.Limit("MemAvailable (host)", 20 * GIB, 24 * GIB))
    monkeypatch.setattr(memory, "process_rss", lambda: GIB // 4)
    b = memory_budget("cpu", root=root, proc_cgroup=proc, include_process=True)
    # The RSS is already in memory.current, so not free: it is added back, and half the rest.
    assert b.in_use == GIB // 4 and b.bytes == GIB // 4 + GIB
    text = b.describe()
    assert text.startswith("1.2 GiB for the process (256.0 MiB in use + 50% of what is free under the "
                           "tightest limit, cgroup v2 memory.max"), text
    assert str(root / "box") in text and b.source == b.limit.source
    # On CUDA the budget is device memory: the host RSS is not added.
    monkeypatch.setattr(memory, "gpu_limit", lambda device_id=0: memory.Limit("free GPU memory (device 0)", GIB))
    g = memory_budget("cuda", root=root, proc_cgroup=proc, include_process=True)
    assert g.in_use == 0 and g.bytes == GIB // 2


def test_a_given_budget_is_capped_by_the_tightest_limit_and_says_so(tmp_path, monkeypatch):
    root, proc = _v2_tree(tmp_path, "/box", {"box": {"memory.max": str(3 * GIB), "memory.current": str(GIB)}})
    monkeypatch.setattr(memory, "host_limit", lambda: memory.Limit("MemAvailable (host)", 20 * GIB, 24 * GIB))
    monkeypatch.setattr(memory, "process_rss", lambda: GIB // 2)
    cap = memory_budget("cpu", fraction=1.0, root=root, proc_cgroup=proc, include_process=True)
    assert cap.bytes == GIB // 2 + 2 * GIB
    small = memory.given_budget(2 * GIB, cap=cap)
    assert small.bytes == 2 * GIB and not small.capped and small.describe() == "2.0 GiB (given, --memory-budget)"
    big = memory.given_budget(10 * GIB, cap=cap)
    assert big.bytes == cap.bytes and big.capped and big.given == 10 * GIB
    assert big.describe().startswith("2.5 GiB (given 10.0 GiB, capped at 512.0 MiB in use + 100% of what is "
                                     "free under the tightest limit, cgroup v2 memory.max"), big.describe()
    assert memory.given_budget(10 * GIB).bytes == 10 * GIB           # no cap: taken as given


def test_cgroup_v1_nested_path_from_proc_self_cgroup(tmp_path):
    # What a child cgroup made under the v1 root looks like (tests/runtime/test_memory_cgroup.py runs one).
    root = tmp_path / "cgroup"
    d = root / "memory" / "bnwvad-test"
    d.mkdir(parents=True)
    (d / "memory.limit_in_bytes").write_text(str(3 * GIB // 2))
    (d / "memory.usage_in_bytes").write_text(str(GIB // 8))
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("9:name=systemd:/\n4:memory:/bnwvad-test\n0::/\n")    # hybrid: v2 root has no controllers file
    (lim,) = cgroup_limits(root, proc)
    assert lim.available == 3 * GIB // 2 - GIB // 8 and lim.total == 3 * GIB // 2
    assert lim.source == f"cgroup v1 memory.limit_in_bytes ({d})"
