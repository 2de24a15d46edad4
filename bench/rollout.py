"""Roll a Deployment of sidecar pods under load, with and without the drain, on loopback.

Plays Kubernetes on this machine (see ``tests/rollout/simulator.py``): N sidecar pods
behind a load balancer that follows their readiness probes with a propagation lag, a
steady mix of short, slow, streaming and WebSocket traffic, and rolling updates that
replace every pod (new pod ready, old pod's preStop, SIGTERM, exit). Prints a report per
run and writes them all as JSON.

    python bench/rollout.py                          # both modes, the defaults below
    python bench/rollout.py --mode drain --pods 5 --rollouts 3 --rate 400

``--mode no-drain`` is what a server that stops on SIGTERM does: no preStop, drain delay
0, the listener closed at once (drain mode ``fixed`` unless ``--drain-mode`` says other).
Exit status: 0 when every run in drain mode dropped nothing and every pod stopped
cleanly, 1 otherwise, 2 when the simulation itself failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's tests.rollout and sidecar, not an install

from tests.rollout.simulator import Report, Settings, SimulationError, run  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = Settings()
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--mode", choices=("both", "drain", "no-drain"), default="both")
    add("--pods", type=int, default=d.pods)
    add("--rollouts", type=int, default=d.rollouts, help="each replaces every pod")
    add("--rate", type=float, default=d.rate, help="HTTP requests per second")
    add("--websockets", type=int, default=d.websockets, help="sessions open at any time")
    add("--slow-share", type=float, default=d.slow_share)
    add("--stream-share", type=float, default=d.stream_share)
    add("--slow-seconds", type=float, default=d.slow_seconds)
    add("--stream-chunks", type=int, default=d.stream_chunks)
    add("--stream-interval", type=float, default=d.stream_interval)
    add("--ws-session-seconds", type=float, default=d.ws_session_seconds)
    add("--warmup", type=float, default=d.warmup, help="load before the first rollout")
    add("--cooldown", type=float, default=d.cooldown, help="load after the last rollout")
    add("--drain-delay", type=float, default=d.drain_delay, help="in drain mode")
    add(
        "--drain-mode",
        choices=("idle", "fixed"),
        default=None,
        help="the sidecar's shutdown.drain_mode (default: idle with the drain, fixed without)",
    )
    add("--graceful-timeout", type=float, default=d.graceful_timeout)
    add("--shutdown-timeout", type=float, default=d.shutdown_timeout)
    add("--probe-period", type=float, default=d.probe_period)
    add("--probe-timeout", type=float, default=d.probe_timeout)
    add("--failure-threshold", type=int, default=d.failure_threshold)
    add(
        "--propagation-lag",
        type=float,
        default=d.propagation_lag,
        help="seconds before a readiness change reaches the load balancer",
    )
    add("--request-timeout", type=float, default=d.request_timeout)
    add("--seed", type=int, default=d.seed)
    add("--json", type=Path, default=None, help="report file (default: bench/results/...)")
    add("--quiet", action="store_true", help="no progress lines")
    return parser.parse_args(argv)


def settings_for(args: argparse.Namespace, drain: bool) -> Settings:
    return Settings(
        pods=args.pods,
        rollouts=args.rollouts,
        rate=args.rate,
        websockets=args.websockets,
        slow_share=args.slow_share,
        stream_share=args.stream_share,
        slow_seconds=args.slow_seconds,
        stream_chunks=args.stream_chunks,
        stream_interval=args.stream_interval,
        ws_session_seconds=args.ws_session_seconds,
        warmup=args.warmup,
        cooldown=args.cooldown,
        drain=drain,
        drain_delay=args.drain_delay,
        drain_mode=args.drain_mode or ("idle" if drain else "fixed"),
        graceful_timeout=args.graceful_timeout,
        shutdown_timeout=args.shutdown_timeout,
        probe_period=args.probe_period,
        probe_timeout=args.probe_timeout,
        failure_threshold=args.failure_threshold,
        propagation_lag=args.propagation_lag,
        request_timeout=args.request_timeout,
        seed=args.seed,
    )


def clean(report: Report) -> bool:
    return report.failed == 0 and all(pod.clean for pod in report.pods)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modes = {"both": (True, False), "drain": (True,), "no-drain": (False,)}[args.mode]
    progress = None if args.quiet else (lambda line: print(line, flush=True))
    reports: list[Report] = []
    for drain in modes:
        settings = settings_for(args, drain)
        try:
            settings.check()
        except ValueError as exc:
            print(f"rollout: {exc}", file=sys.stderr)
            return 2
        print(f"--- {'drain' if drain else 'no drain'}", flush=True)
        try:
            report = run(settings, progress=progress)
        except SimulationError as exc:
            print(f"rollout: the simulation failed: {exc}", file=sys.stderr)
            return 2
        reports.append(report)
        print(report.summary(), flush=True)
        print(
            f"(harness: worst event-loop stall {report.harness_max_stall_seconds:.2f}s, "
            f"pacer behind by up to {report.pacer_max_behind_seconds:.2f}s)",
            flush=True,
        )
    if len(reports) == 2:
        with_drain, without = reports
        print(
            f"--- drain: {with_drain.failed} of {with_drain.sent} failed; "
            f"no drain: {without.failed} of {without.sent} failed",
            flush=True,
        )
    path = args.json or RESULTS / f"rollout-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    command = "python bench/rollout.py " + " ".join(sys.argv[1:] if argv is None else argv)
    runs = [json.loads(report.to_json()) for report in reports]
    path.write_text(json.dumps({"command": command.strip(), "runs": runs}, indent=2) + "\n")
    print(f"report written to {path}", flush=True)
    drained = [r for r, drain in zip(reports, modes, strict=True) if drain]
    return 0 if all(clean(r) for r in drained) else 1


if __name__ == "__main__":
    sys.exit(main())
