"""Rolling updates of real sidecar pods under load, with and without the drain.

The CI size of the simulation (``bench/rollout.py`` runs bigger ones, and the figures in
docs/shutdown.md): 3 pods rolled twice (six pod replacements, then the last three pods stopped)
under 200 requests per second of short, slow (2 s) and streaming requests plus 8
WebSocket sessions. The Kubernetes timings are scaled down to keep the test short: a
probe every 0.2 s, unready after 3 failures, 0.3 s for endpoint updates to reach the load
balancer, so a 1.5 s drain delay covers the time the load balancer takes to stop
routing to a pod after its preStop (at most 0.2 + 2 x 0.2 + 0.3 s).
"""

from __future__ import annotations

from dataclasses import replace

from .simulator import KINDS, Report, Settings, run

CI = Settings(rate=200, websockets=8, warmup=0.5, cooldown=0.5, app_startup=0.1, probe_period=0.2)

WITH_DRAIN = replace(CI, pods=3, rollouts=2, propagation_lag=0.3, drain_delay=1.5)

# A server without a drain: no preStop, SIGTERM straight away, the listener closed at
# once (drain mode fixed), while the load balancer keeps routing to the pod for three
# failed probes plus a second of propagation. One rollout of two pods is plenty.
WITHOUT_DRAIN = replace(
    CI, pods=2, rollouts=1, propagation_lag=1.0, drain=False, drain_mode="fixed"
)


def explain(report: Report) -> str:
    """The report, plus the log of every pod that did not stop cleanly."""
    parts = [report.summary()]
    if report.failures:
        parts.append(f"load balancer errors: {report.proxy_upstream_errors}")
        parts.append(f"routing: {report.routing_events}")
    parts.append(
        f"harness: worst stall {report.harness_max_stall_seconds}s, "
        f"pacer behind by up to {report.pacer_max_behind_seconds}s"
    )
    for pod in report.pods:
        if not pod.clean or pod.metrics_error:
            parts.append(f"--- {pod.name}: {pod}\n" + "\n".join(pod.log_tail))
    return "\n".join(parts)


def test_a_rolling_update_with_the_drain_drops_nothing() -> None:
    report = run(WITH_DRAIN)
    why = explain(report)
    assert report.failed == 0, why
    assert len(report.pods) == 3 * 3, why
    for pod in report.pods:
        assert pod.prestop_status == 200, why
        assert pod.exit_code == 0, why
        assert not pod.killed, why
        assert pod.lifespan_shutdown, why
        # Read from the pod's /metrics during its lifespan shutdown: None would mean
        # the reading failed, not that nothing was aborted.
        assert pod.requests_aborted == 0, why
        assert pod.in_flight_at_shutdown == 0, why
    for kind in KINDS:
        assert report.by_kind[kind]["succeeded"] > 0, why
    # WebSockets open on stopping pods were closed with 1012 and reconnected elsewhere.
    assert report.websocket_restarts > 0, why


def test_the_same_rollout_without_the_drain_drops_requests() -> None:
    report = run(WITHOUT_DRAIN)
    why = explain(report)
    assert report.failed > 0, why
    # The pods themselves still stop cleanly: the drops happen at the load balancer,
    # which keeps routing to a pod whose listener is closed.
    for pod in report.pods:
        assert pod.prestop_status is None, why
        assert pod.exit_code == 0, why
        assert pod.lifespan_shutdown, why


def test_a_rolling_update_of_pods_with_two_workers_drops_nothing() -> None:
    report = run(replace(WITH_DRAIN, pods=2, rollouts=1, workers=2))
    why = explain(report)
    assert report.failed == 0, why
    assert len(report.pods) == 2 * 2, why
    for pod in report.pods:
        assert pod.prestop_status == 200, why
        assert pod.exit_code == 0, why
        assert not pod.killed, why
        assert pod.lifespan_shutdown, why
    for kind in KINDS:
        assert report.by_kind[kind]["succeeded"] > 0, why
