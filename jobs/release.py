"""Release a model's candidate: canary, A/B or shadow, judged on live traffic.

Submit it to the cluster (run from the repository root; the model API must be deployed):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.release --model digits
    ray job submit ... -- python -m jobs.release --model digits --mode shadow --weight 100
    ray job submit ... -- python -m jobs.release --model digits --status
    ray job submit ... -- python -m jobs.release --model digits --abort

The release controller actor does the work (actors/release/): it steps the
canary (``--steps 5,25,50,100``) while the candidate's online metrics stay within the
thresholds, and rolls it back by itself otherwise; the registry aliases follow. This job
starts a release and follows it, printing each move, until it ends (``--no-wait`` returns at
once). Exit status: 0 when the candidate was promoted (canary) or passed (shadow), or the
A/B split runs; 1 when it was rolled back or aborted; 2 for a release that cannot start (or
none to abort). From a shell with the cluster's token, ``aimass release status [MODEL]``
and ``aimass release abort MODEL`` do the same as --status and --abort without a job.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import ray
from pydantic import ValidationError

from actors.release import ReleaseConfig, ReleaseState, Thresholds, controller_actor

# A release followed to one of these succeeded (an A/B split is followed until it runs).
_SUCCEEDED = {ReleaseState.PROMOTED, ReleaseState.PASSED, ReleaseState.RUNNING}


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, ReleaseConfig | None]:
    described = ReleaseConfig.model_fields | Thresholds.model_fields
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="registered model name")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--status", action="store_true", help="print the release and exit")
    action.add_argument("--abort", action="store_true", help="roll the running release back")
    parser.add_argument("--no-wait", action="store_true", help="start it and return")
    parser.add_argument("--steps", help="canary shares in percent, e.g. 5,25,50,100")
    for name in ("candidate", "mode", "weight", "min_step_s", "min_requests", "max_release_s"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", dest=name, help=described[name].description
        )
    for name in Thresholds.model_fields:
        parser.add_argument(
            f"--{name.replace('_', '-')}", dest=name, help=described[name].description
        )
    args = parser.parse_args(argv)
    if args.status or args.abort:
        return args, None
    given = {k: v for k, v in vars(args).items() if v is not None}
    thresholds = {k: given.pop(k) for k in list(given) if k in Thresholds.model_fields}
    fields = {k: v for k, v in given.items() if k in ReleaseConfig.model_fields}
    if args.steps:
        fields["steps"] = [s for s in args.steps.split(",") if s]
    try:
        return args, ReleaseConfig(**fields, thresholds=Thresholds(**thresholds))
    except ValidationError as err:
        parser.error("; ".join(_where(e) + e["msg"] for e in err.errors()))


def _where(error: dict) -> str:
    return f"--{'-'.join(map(str, error['loc'][-1:])).replace('_', '-')}: " if error["loc"] else ""


def _line(event: dict) -> str:
    cand = event["candidate"]
    figures = ", ".join(
        f"{k} {v:.3g}" for k, v in cand.items() if v is not None and k != "labelled"
    )
    return f"[release] {event['action']}: {event['detail']} (share {event['share']:.0%}; candidate {figures})"


def follow(controller, model: str, poll_s: float = 2.0) -> dict:
    """Print each move of ``model``'s release as it happens; the final status."""
    shown = 0
    while True:
        status = ray.get(controller.status.remote(model))[0]
        for event in status["history"][shown:]:
            print(_line(event), flush=True)
        shown = len(status["history"])
        if status["state"] != ReleaseState.RUNNING or status["config"]["mode"] == "ab":
            return status
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> None:
    args, cfg = parse(argv)
    ray.init(log_to_driver=False)
    controller = controller_actor()
    if args.status:
        print(json.dumps(ray.get(controller.status.remote(args.model)), indent=1, default=str))
        return
    try:
        if args.abort:
            status = ray.get(controller.abort.remote(args.model))
            print(f"[release] {args.model}: {status['history'][-1]['detail']}")
            sys.exit(1)
        status = ray.get(controller.start.remote(cfg.model_dump()))
    except ray.exceptions.RayTaskError as err:
        cause = err.cause if isinstance(err.cause, Exception) else err
        print(f"[release] cannot {'abort' if args.abort else 'start'}: {cause}", file=sys.stderr)
        sys.exit(2)
    print(
        f"[release] {cfg.model}: {cfg.mode} of v{status['candidate']} against champion "
        f"v{status['champion']} (release {status['id']})",
        flush=True,
    )
    if args.no_wait:
        return
    status = follow(controller, cfg.model)
    print(f"[release] {cfg.model}: {status['state']}", flush=True)
    sys.exit(0 if ReleaseState(status["state"]) in _SUCCEEDED else 1)


if __name__ == "__main__":
    main()
