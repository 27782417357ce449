"""Samples become rows of the bundle's samples table; absent values stay null, never zero."""

from __future__ import annotations

import math

from bottleneck_map.agent.host import SLOW_HOST_FIELDS
from bottleneck_map.agent.sample import (
    DiskCounters,
    GpuSample,
    HostSample,
    NetCounters,
    ProcSample,
    Sample,
    to_columns,
    to_rows,
)
from bottleneck_map.bundle import BundleWriter, new_meta, read_bundle


def _sample() -> Sample:
    host = HostSample(
        cpu_util_ratio=0.25,
        cpu_util_per_core=[0.5, 0.0],
        cpu_util_max_core_ratio=0.5,
        load1=1.5,
        host_mem_used_bytes=4e9,
        host_mem_total_bytes=16e9,
        host_swap_used_bytes=0.0,
        net={"lo": NetCounters(100, 100, 2, 2), "eth0": NetCounters(1000, 50, 10, 1)},
        disk={"sda": DiskCounters(4096, 8192)},
    )
    proc = ProcSample(
        pid=42, cpu_ratio=1.5, num_threads=12, rss_bytes=2e9, ctx_switches_voluntary=7, ctx_switches_involuntary=3
    )
    gpus = [
        GpuSample(
            index=0,
            uuid="GPU-a",
            gpu_util_ratio=0.9,
            power_w=300.0,
            gpm_sm_occupancy_ratio=0.4,
            gpm_gr_engine_active_ratio=0.9,
        ),
        GpuSample(index=1, lost=True),
    ]
    return Sample(ts_ns=123, host=host, proc=proc, gpus=gpus)


def test_rows_carry_totals_and_the_watched_process():
    host, g0, g1 = to_rows(_sample(), instance="node-1")
    assert host["source"] == "host" and host["device"] == "host" and host["instance"] == "node-1"
    assert host["net_rx_bytes_total"] == 1100 and host["net_tx_packets_total"] == 3
    assert host["disk_write_bytes_total"] == 8192
    assert host["cpu_util_per_core"] == [0.5, 0.0]
    assert host["proc_cpu_ratio"] == 1.5 and host["proc_ctx_switches_involuntary_total"] == 3
    assert (g0["source"], g0["device"], g0["gpu_util_ratio"]) == ("gpu", "0", 0.9)
    assert g0["gpm_sm_occupancy_ratio"] == 0.4
    assert g1["device"] == "1" and g1["gpu_util_ratio"] is None


def test_rows_round_trip_through_a_bundle_with_nulls_kept(tmp_path):
    with BundleWriter(tmp_path / "b", new_meta("test")) as w:
        w.extend("samples", to_rows(_sample()))
    df = read_bundle(tmp_path / "b").samples
    assert list(df["source"]) == ["host", "gpu", "gpu"]
    gpu1 = df[df["device"] == "1"].iloc[0]
    assert math.isnan(gpu1["power_w"])  # absent stays null, never 0
    gpu0 = df[df["device"] == "0"].iloc[0]
    assert gpu0["power_w"] == 300.0 and math.isnan(gpu0["temperature_c"])
    assert list(df.iloc[0]["cpu_util_per_core"]) == [0.5, 0.0]


def test_host_only_sample_has_one_row():
    rows = to_rows(Sample(ts_ns=1, host=HostSample(cpu_util_ratio=0.1)))
    assert [r["source"] for r in rows] == ["host"]


def test_stale_fields_are_null_in_rows_but_kept_on_the_sample():
    g = GpuSample(index=0, temperature_c=61.0, power_w=300.0, stale=frozenset({"temperature_c"}))
    h = HostSample(cpu_util_ratio=0.5, load1=2.0, host_mem_used_bytes=1e9, net={"lo": NetCounters(1, 1, 1, 1)})
    h.stale = SLOW_HOST_FIELDS  # the host source carries a reading over whole
    host, gpu = to_rows(Sample(ts_ns=5, host=h, gpus=[g]))
    assert gpu["temperature_c"] is None and gpu["power_w"] == 300.0
    assert host["cpu_util_ratio"] is None and h.cpu_util_ratio == 0.5
    assert host["load1"] is None and host["host_mem_used_bytes"] is None and host["net_rx_bytes_total"] is None
    assert g.temperature_c == 61.0 and h.load1 == 2.0  # /metrics still shows the last reading


def test_columns_hold_the_same_rows_in_the_same_order():
    stale_gpu = GpuSample(index=3, power_w=1.0, temperature_c=60.0, stale=frozenset({"temperature_c"}))
    other = GpuSample(index=4, power_w=2.0, temperature_c=61.0, gpm_sm_util_ratio=0.5, stale=frozenset({"power_w"}))
    stale_host = HostSample(cpu_util_ratio=0.5, load1=2.0, stale=frozenset({"load1"}))
    samples = [
        _sample(),
        Sample(ts_ns=200, host=stale_host, gpus=[stale_gpu, other, stale_gpu]),
        Sample(ts_ns=300, proc=ProcSample(pid=1, cpu_ratio=0.1)),
        Sample(ts_ns=400),  # nothing measured: no row
    ]
    rows = [row for s in samples for row in to_rows(s, "node-1")]
    columns = to_columns(samples, "node-1")
    assert all(len(values) == len(rows) == 8 for values in columns.values())
    for i, row in enumerate(rows):
        assert {name: values[i] for name, values in columns.items() if name in row} == row
        assert all(values[i] is None for name, values in columns.items() if name not in row)
    assert columns["temperature_c"][4] is None and columns["power_w"][4] == 1.0 and columns["load1"][3] is None
    assert columns["power_w"][5] is None and columns["temperature_c"][5] == 61.0  # each row its own stale set
    assert columns["gpm_sm_util_ratio"][5] == 0.5 and columns["temperature_c"][6] is None
    assert to_columns([Sample(ts_ns=1)]) == {}
    gpu_only = to_columns([Sample(ts_ns=7, gpus=[other])], "node-1")  # no host row: host columns all null
    assert gpu_only.keys() == columns.keys() and gpu_only["load1"] == [None] and gpu_only["device"] == ["4"]


def test_columns_round_trip_through_a_bundle(tmp_path):
    with BundleWriter(tmp_path / "b", new_meta("test")) as w:
        w.extend_columns("samples", to_columns([_sample(), _sample()]))
    df = read_bundle(tmp_path / "b").samples
    assert list(df["source"]) == ["host", "gpu", "gpu"] * 2
    assert df.iloc[1]["gpm_sm_occupancy_ratio"] == 0.4 and math.isnan(df.iloc[2]["power_w"])


def test_host_columns_hold_each_host_and_process_value_in_its_own_column():
    host = HostSample(0.1, [0.1, 0.2], 0.2, 1.0, 5.0, 15.0, 2.0, 3.0, 4.0, 6.0, 7.0)
    host.net = {"eth0": NetCounters(11.0, 12.0, 13.0, 14.0)}
    host.disk = {"sda": DiskCounters(21.0, 22.0)}
    proc = ProcSample(pid=9, cpu_ratio=0.5, num_threads=31.0, rss_bytes=32.0)
    proc.ctx_switches_voluntary, proc.ctx_switches_involuntary = 33.0, 34.0
    (row,) = to_rows(Sample(ts_ns=1, host=host, proc=proc))
    columns = to_columns([Sample(ts_ns=1, host=host, proc=proc)])
    assert {name: values[0] for name, values in columns.items() if name in row} == row
    assert len({v for k, v in row.items() if isinstance(v, float)}) == 17  # all distinct: none swapped
