"""The Ray Serve application: `serve run configs/serve/<app>.yaml` (import_path runtime.serve.app:build_app).

`build_app` checks the application's args (runtime.serve.app_args), sizes the replicas from the memory
they measurably use (runtime.serve.placement), sets up scaling, and binds the deployment
(runtime.serve.deployment).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from ray import serve

from runtime.serve.app_args import AppArgs, parse_args
from runtime.serve.autoscaling import ray_autoscaling_config
from runtime.serve.deployment import ModelServer
from runtime.serve.error_codes import RETRY_AFTER_S
from runtime.serve.placement import actor_options, cluster_free, replica_need
from runtime.serve.rollout_controller import RolloutController

log = logging.getLogger("trtserve.server")


def deployment_options(args: AppArgs) -> dict[str, Any]:
    """Ray Serve's options for the deployment these args describe."""
    options: dict[str, Any] = {
        "max_ongoing_requests": args.max_ongoing_requests,
        "max_queued_requests": args.max_queued_requests,
        # Past max_queued_requests (e.g. while Ray's fallback proxy holds requests for a replica being
        # replaced): 503 with Retry-After, as our replicas answer a full model queue.
        "backpressure_config": {"status_code": 503, "retry_after_s": RETRY_AFTER_S},
        # Scale-down drains: a stopping replica gets this long to finish what it holds.
        "graceful_shutdown_timeout_s": 30,
        # check_health is cheap (no engine call): ask often, so a broken replica leaves the ingress sooner.
        "health_check_period_s": 2,
        "health_check_timeout_s": 10,
        # Ray Serve's own access line (one more JSON record per request) only where every request is to be
        # logged: otherwise ours, sampled, is the access log (runtime.serve.access_log).
        "logging_config": {
            "encoding": "JSON",
            "log_level": args.log_level,
            "enable_access_log": args.logging.requests == "all",
        },
    }
    if args.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = args.max_replicas_per_node
    need = replica_need(args)
    if need is not None:
        options["ray_actor_options"] = actor_options(
            need, args.ray_actor_options, args.placement.headroom, cluster_free()
        )
        log.info("replica need %s -> ray_actor_options %s", need.to_dict(), options["ray_actor_options"])
    elif args.ray_actor_options is not None:
        options["ray_actor_options"] = args.ray_actor_options
    if args.autoscaling is not None:
        options["autoscaling_config"] = ray_autoscaling_config(args.autoscaling, need)
    elif args.autoscaling_config is not None:
        options["autoscaling_config"] = args.autoscaling_config
    else:
        options["num_replicas"] = args.num_replicas or 1
    return options


def build_app(args: dict[str, Any]) -> serve.Application:
    """The `import_path` of every trtserve config: Ray Serve calls it with the config's `args`."""
    return build_app_with(args, ModelServer)


def build_app_with(args: dict[str, Any], deployment) -> serve.Application:
    """`build_app` with another serving deployment (tests plant faults in a subclass of ModelServer's).

    Ray Serve requires an application builder to take exactly one parameter, so this is a separate function.
    """
    args = parse_args(args)
    # Version numbers, not directories: each replica finds (in an object store: downloads and verifies)
    # its own copy on the node it runs on.
    repository = str(args.repository_path)
    versions = args.versions()
    rollouts = RolloutController.bind(
        {spec.name: str(v) for spec, v in zip(args.models, versions, strict=True)},
        {spec.name: repository for spec in args.models},
    )
    server = deployment.options(**deployment_options(args))
    # Read here to check it (AppArgs); each replica reads and watches it on its own node (runtime.auth.watch),
    # never serving a table read elsewhere.
    tokens_file = str(args.auth.tokens_path) if args.auth is not None else None
    # One secret per application build, the same on every replica (a request's records, answered and
    # mirrored, are kept or dropped together; a retried request reaches the same version): a client cannot
    # pick ids that are captured, or that a rollout's candidate answers.
    app_secret = secrets.token_bytes(32)
    return server.bind(
        repository,
        versions,
        args.models,
        args.max_body_mb,
        rollouts,
        tokens_file,
        app_secret=app_secret,
        request_logging=args.logging,
    )
