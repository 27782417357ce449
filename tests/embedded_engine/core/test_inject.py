import time

import pytest

from bottleneck_map.embedded_engine.core.inject import Injection, parse_injections, spin


def test_parse_and_meta():
    inj = parse_injections(["step_host_ms=2.5", "client-read-ms=10"])
    assert inj == Injection(step_host_ms=2.5, client_read_ms=10.0)
    assert inj.to_meta() == {"step_host_ms": 2.5, "client_read_ms": 10.0}
    assert parse_injections([]).to_meta() == {} and not parse_injections([]).active


@pytest.mark.parametrize(
    "item", ["nope=1", "step_host_ms", "step_host_ms=abc", "step_host_ms=-1", "client_read_ms=nan"]
)
def test_parse_rejects(item):
    with pytest.raises(ValueError):
        parse_injections([item])


def test_spin_burns_cpu_for_the_requested_time():
    t0, c0 = time.perf_counter(), time.process_time()
    spin(200_000_000)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert wall >= 0.2
    # a busy loop, not a sleep: it burns CPU (a sleep would burn ~0; 10 % leaves room for a loaded machine)
    assert cpu >= 0.02


def test_faults_show_up_where_planted(tmp_path, make_engine, tiny):
    from bottleneck_map.bundle import BundleWriter, new_meta, read_bundle
    from bottleneck_map.embedded_engine.core.tracing import TraceSink
    from bottleneck_map.embedded_engine.workloads.runner import run_workload
    from bottleneck_map.embedded_engine.workloads.workload import WorkloadRequest

    inj = Injection(tokenize_us_per_token=200.0, client_read_ms=20.0)
    engine = make_engine(num_kv_blocks=32, max_model_len=256, injection=inj)
    writer = BundleWriter(tmp_path / "b", new_meta("test", injected=inj.to_meta()))
    engine.sink = TraceSink(writer, None)
    reqs = [WorkloadRequest(f"r{i}", 0.0, "chat", 6, " alpha beta" * 25) for i in range(2)]
    run_workload(engine, reqs)
    writer.close()
    b = read_bundle(tmp_path / "b")
    r = b.requests
    assert b.meta["injected"] == {"tokenize_us_per_token": 200.0, "client_read_ms": 20.0}
    tok = (r.tokenize_end_ns - r.tokenize_start_ns) / 1e6
    assert (tok >= 0.2 * 50 * 0.9).all()  # about 50 tokens at 0.2 ms each
    gaps = r.delivered_ns.map(lambda d: min(b - a for a, b in zip(d, d[1:], strict=False)))
    assert (gaps >= 20_000_000).all()  # the slow client paces every chunk
