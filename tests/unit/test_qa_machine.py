"""The machine as apr sees it: the default thread count from free cores and quota, the cgroup OOM counter, and
the calibration figures that cell deadlines and throughput floors are derived from."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from apr.machine import cgroup_quota_cores, choose_threads, oom_kills
from apr.qa.calibration import (
    FLOOR_SHARE_OF_CEILING,
    MAX_CELL_S,
    attempt_deadline,
    calibrate,
    cell_budget,
    throughput_floor,
)
from apr.qa.evidence import Calibration

QWEN_Q4_BYTES = 1_117_320_768


def machine(stream_gb_s: float, startup_s: float = 3.0, threads: int = 1) -> Calibration:
    return Calibration(
        threads=threads,
        threads_reason="test",
        stream_gb_s=stream_gb_s,
        startup_s=startup_s,
        measured_at=datetime(2026, 12, 4, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    "affinity,online,load1,quota,threads",
    [
        (2, 2, 0.2, None, 2),  # a quiet 2-core box: both cores
        (2, 2, 3.4, None, 1),  # three neighbours' threads runnable: one thread, not two spinning at barriers
        (2, 2, 1.2, None, 1),  # one core busy
        (2, 64, 30.0, None, 2),  # a big host with room to spare: the affinity mask limits, not the load
        (8, 8, 0.0, 2.5, 2),  # the cgroup quota caps the usable cores
        (4, 4, None, None, 4),  # no load average: every usable core
    ],
)
def test_the_default_thread_count_is_the_free_cores_within_the_usable_ones(affinity, online, load1, quota, threads):
    choice = choose_threads(affinity=affinity, online=online, load1=load1, quota=quota, read_system=False)
    assert choice.threads == threads
    assert f"{affinity} CPU(s)" in choice.reason and (quota is None or "quota" in choice.reason)


def test_the_reason_says_why_fewer_threads_than_cores():
    busy = choose_threads(affinity=2, online=2, load1=6.0, read_system=False)
    assert "load average 6.00" in busy.line() and "spin at barriers" in busy.line()


def test_cgroup_quota_and_oom_counter_are_read_from_v1_and_v2_layouts(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    assert cgroup_quota_cores(v2) == 1.5 and oom_kills(v2) == 2
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota_cores(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "memory").mkdir()
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "memory" / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n")
    assert cgroup_quota_cores(v1) is None and oom_kills(v1) == 5
    assert oom_kills(tmp_path / "none") is None


def test_a_cell_deadline_grows_as_the_machine_slows_and_with_the_model():
    floor = 180.0
    assert cell_budget(None, QWEN_Q4_BYTES, 600, 64, floor) == floor  # uncalibrated: as written
    quiet = cell_budget(machine(20.0, 3.0), QWEN_Q4_BYTES, 600, 64, floor)
    busy = cell_budget(machine(2.0, 12.0), QWEN_Q4_BYTES, 600, 64, floor)
    tiny = cell_budget(machine(2.0, 12.0), 100_000_000, 600, 64, floor)
    assert quiet == floor < tiny < busy <= MAX_CELL_S
    assert busy > 3 * floor  # the loaded machine of issue 21 gets several times the quiet deadline
    assert cell_budget(machine(0.01, 60.0), QWEN_Q4_BYTES, 600, 64, floor) == MAX_CELL_S
    assert [attempt_deadline(100.0, n) for n in range(3)] == [100.0, 200.0, 400.0]


def test_a_throughput_floor_is_judged_against_what_the_machine_allows():
    written = 5.0
    fast = throughput_floor(written, machine(60.0), QWEN_Q4_BYTES)
    assert fast.applied == written and "as written" in fast.note
    busy = throughput_floor(written, machine(4.0), QWEN_Q4_BYTES)
    ceiling = 4.0e9 / QWEN_Q4_BYTES
    assert busy.applied == pytest.approx(FLOOR_SHARE_OF_CEILING * ceiling) and busy.applied < written
    assert "lowered" in busy.note and "4.0 GB/s" in busy.note and "same run" in busy.note
    assert throughput_floor(written, None, QWEN_Q4_BYTES).applied == written


def test_calibration_measures_a_real_child_and_chooses_a_thread_count():
    calibration, line = calibrate(threads=1)
    assert calibration is not None, line
    assert calibration.threads == 1 and calibration.stream_gb_s > 0 and calibration.startup_s > 0
    assert "GB/s" in line and "--threads 1" in calibration.threads_reason
