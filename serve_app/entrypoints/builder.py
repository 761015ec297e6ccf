"""Application builders: `serve run serve_app.entrypoints.builder:build_app [key=value ...]` or a serve config YAML
(`serve_app/configs/serve_cpu.yaml`) whose `args` are an `AppConfig`.

The generator's placement group is declared here: one bundle per worker (`AppConfig.worker_bundle`), `STRICT_PACK`
so all of a replica's workers share a node and can form their torch.distributed group over its address. The replica
actor itself takes no resources, so it fits into bundle 0 next to rank 0.
"""

from typing import Any

from ray.serve import Application

from serve_app.config import AppConfig
from serve_app.logs import serve_logging_config
from serve_app.safety import check_bind, serve_http_host

APP_NAME = "pab"


def generator_options(config: AppConfig) -> dict[str, Any]:
    """`Deployment.options(...)` of the generator for this config."""
    options: dict[str, Any] = {
        "placement_group_bundles": config.placement_group_bundles(),
        "placement_group_strategy": "STRICT_PACK",
        "ray_actor_options": {"num_cpus": 0, "num_gpus": 0},
        "max_ongoing_requests": config.generator_max_ongoing_requests,
        "health_check_period_s": config.health_check_period_s,
        "health_check_timeout_s": config.health_check_timeout_s,
        "logging_config": serve_logging_config(config.log_level),
    }
    if config.autoscaling_config is not None:
        from deployments.autoscaling import resolve_autoscaling_config

        options["autoscaling_config"] = resolve_autoscaling_config(config.autoscaling_config)
    else:
        options["num_replicas"] = config.num_replicas or 1
    return options


def build_app(args: AppConfig) -> Application:
    """The Videos API app: an HTTP ingress in front of the generator deployment. Refuses (`UnsafeBindError`) to
    build when Serve's HTTP proxy binds beyond loopback and no API key is configured."""
    from deployments.generator import VideoGeneratorDeployment
    from deployments.ingress import VideoIngress

    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args or {})
    check_bind(serve_http_host(), config)  # no public HTTP with auth off, unless the config opts in
    generator = VideoGeneratorDeployment.options(**generator_options(config)).bind(config)
    return VideoIngress.options(num_replicas=config.ingress_replicas,
                                logging_config=serve_logging_config(config.log_level)).bind(generator, config)
