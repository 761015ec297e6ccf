"""The `pab` console script.

    pab serve [--config FILE] [key=value ...]   serve the Videos API (starts Ray in-process, or --address)
    pab generate "a red square moving left"      one video locally, no Ray, straight through the pipeline
    pab submit "a blue disc moving up"           client: submit to a server, show progress, save the mp4
    pab status [VIDEO_ID]                        client: server health and recent jobs, or one job

The default model (tiny-shapes) knows the words of prompts such as "a green triangle moving right": colours red,
green, blue, yellow; shapes square, disc, triangle; directions left, right, up, down. Errors are one line that names
the field at fault.

More subcommands plug in from `serve_app.commands` (see its docstring). Ray is imported only by `serve`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

DEFAULT_URL = "http://127.0.0.1:8000"


# ---- shared helpers ------------------------------------------------------------------------------------------------
def progress_bar(percent: float, label: str = "", width: int = 30, stream: Any = None) -> None:
    """Draw one frame of a text progress bar on stderr (carriage return, no newline)."""
    stream = stream or sys.stderr
    filled = int(width * min(max(percent, 0), 100) / 100)
    stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {percent:5.1f}% {label}")
    stream.flush()


def _parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs (dotted keys for nested sections, YAML values) -> a nested dict."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"pab: expected key=value, got {pair!r} (e.g. sp_degree=4 or limits.max_frames=64)")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def load_app_config(path: str | None, overrides: Sequence[str] = ()) -> Any:
    """An `AppConfig` from a serve config YAML (its first application's `args`), a plain args YAML, or defaults,
    with `key=value` overrides on top."""
    import yaml

    from serve_app.config import AppConfig

    data: dict[str, Any] = {}
    if path:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        data = loaded["applications"][0].get("args", {}) if "applications" in loaded else loaded
    return AppConfig.model_validate(_merge(data, _parse_overrides(overrides)))


def _client(args: argparse.Namespace) -> Any:
    import httpx

    key = args.api_key or os.environ.get("PAB_API_KEY") or os.environ.get("OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=args.http_timeout)


def _check(response: Any) -> Any:
    """The JSON of a response, or exit with the server's OpenAI-shaped error message."""
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            detail = f"{error.get('message')} (param={error.get('param')}, code={error.get('code')})"
        except (ValueError, KeyError, TypeError):
            detail = response.text[:500]
        raise SystemExit(f"pab: server answered {response.status_code}: {detail}")
    return response.json()


def _stats_line(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "PAB: no stats"
    kinds = ", ".join(f"{k} {v['hit_rate']:.0%}" for k, v in stats.get("kinds", {}).items() if v.get("calls"))
    comm = stats.get("comm", {})
    return (f"PAB {stats.get('preset')}: broadcast hit rate {kinds or 'n/a'}; "
            f"comm bytes issued {comm.get('issued_bytes', 0)}, skipped {comm.get('skipped_bytes', 0)}")


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("PAB_URL", DEFAULT_URL), help="server base URL (env PAB_URL)")
    parser.add_argument("--api-key", default=None, help="bearer key (env PAB_API_KEY or OPENAI_API_KEY)")
    parser.add_argument("--http-timeout", type=float, default=30.0, help="seconds per HTTP call")


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="what to generate")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT, e.g. 32x32 (default: the model's)")
    parser.add_argument("--frames", type=int, default=None, help="frame count (default: the model's)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps")
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--fps", type=int, default=None)
    parser.add_argument("--pab", default=None, help="PAB preset (none, PAB-246, PAB-357, PAB-579, reference) or JSON")
    parser.add_argument("-o", "--output", default=None, help="where to write the mp4")


# ---- pab serve -----------------------------------------------------------------------------------------------------
def _register_serve(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="serve the Videos API on Ray Serve until Ctrl-C")
    p.add_argument("overrides", nargs="*", help="AppConfig fields as key=value (dotted for sections)")
    p.add_argument("--config", default=None, help="a serve config YAML (e.g. serve_app/configs/serve_cpu.yaml)")
    p.add_argument("--address", default=None, help="Ray cluster to connect to (default: start Ray in-process)")
    p.add_argument("--host", default=os.environ.get("PAB_BIND_HOST", "127.0.0.1"),
                   help="HTTP host (env PAB_BIND_HOST; 0.0.0.0 listens on every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of an in-process Ray (default: all)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None,
                   help="what the console shows (default: the config's log_level, warning: banner, job ends, "
                        "problems; debug adds every HTTP request)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from serve_app.safety import UnsafeBindError, check_bind

    _warn_literal_key(args.overrides)
    config = load_app_config(args.config, args.overrides)
    if args.log_level:
        config = config.model_copy(update={"log_level": args.log_level})
    try:
        check_bind(args.host, config)  # before Ray starts: fail in a second, not after a minute of start-up
    except UnsafeBindError as exc:
        raise SystemExit(f"pab serve: {exc}") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from serve_app import console, logs
    from serve_app.entrypoints.builder import APP_NAME, build_app
    from serve_app.store import JobStore

    local = args.address is None
    logs.quiet_driver(config.log_level)
    began = time.monotonic()
    # "local": a Ray of its own even when another runs on this machine (None would join that one, and Ctrl-C would
    # then shut its Serve down).
    ray.init(address=args.address or "local", num_cpus=args.num_cpus if local else None, include_dashboard=False,
             logging_level=logs.level_name(config.log_level))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    url = f"http://{args.host}:{args.port}"
    _say(*console.banner(config, url, _ray_logs_dir()))
    console.follow(JobStore.from_config(config.storage), stop, _say)
    try:
        serve.start(http_options={"host": args.host, "port": args.port},
                    logging_config=logs.serve_logging_config(config.log_level))
        serve.run(build_app(config), name=APP_NAME, route_prefix="/")
        _say(f"pab-serve: ready in {time.monotonic() - began:.0f} s at {url}/v1; Ctrl-C to stop")
        stop.wait()
    finally:
        stop.set()
        _say("pab-serve: shutting down")
        serve.delete(APP_NAME)  # replicas stop gracefully; a Ray of our own then goes with its Serve controller
        ray.shutdown()
    return 0


def _say(*lines: str) -> None:
    for line in lines:
        print(line, flush=True)


def _ray_logs_dir() -> str | None:
    """Where this Ray session writes every process's log (what the console leaves out)."""
    try:
        import ray

        return os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
    except Exception:  # noqa: BLE001 - a private API: the banner just leaves it out
        return None


def _warn_literal_key(overrides: Sequence[str]) -> None:
    """A key on the command line shows in `ps` and the shell history: point to `api_key_env`."""
    if any(o.partition("=")[0] == "api_key" for o in overrides):
        print("pab serve: warning: api_key=... on the command line is deprecated (other users see it in `ps`); "
              "put the key in an environment variable and pass api_key_env=NAME", file=sys.stderr)


# ---- pab generate --------------------------------------------------------------------------------------------------
def _register_generate(subparsers: Any) -> None:
    p = subparsers.add_parser("generate", help="generate one video locally (no Ray, no server)")
    _add_generation_options(p)
    p.add_argument("--model", default=None, help="embedded model name or diffusers path (default: tiny-shapes, the trained embedded model)")
    p.add_argument("--config", default=None, help="take model, PAB preset and defaults from this config YAML")
    p.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    from pab.runtime.pipelines import GenerationParams, VideoGenerator, load_pipeline
    from pab.runtime.video import write_video

    config = load_app_config(args.config, [f"model={args.model}"] if args.model else [])
    size = _size(args.size)
    generator = VideoGenerator(load_pipeline(config.model, dtype=config.dtype), pab=config.pab_preset,
                               defaults=config.defaults)
    params = GenerationParams(
        prompt=args.prompt, negative_prompt=args.negative_prompt or "", num_frames=args.frames,
        width=size[0], height=size[1], num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
        seed=args.seed, fps=args.fps,
    )
    result = generator.generate(params, pab=args.pab, on_step=lambda i, n: progress_bar(100 * (i + 1) / n, "denoising"))
    output = args.output or "video.mp4"
    write_video(result.frames, output, fps=result.params.fps)
    print(f"\nwrote {output}: {result.frames.shape[0]} frames {result.frames.shape[2]}x{result.frames.shape[1]}, "
          f"seed {result.params.seed}, {result.stats.timings.generate_s:.2f} s\n"
          f"{_stats_line(result.stats.pab.model_dump() if result.stats.pab else None)}")
    return 0


def _size(size: str | None) -> tuple[int | None, int | None]:
    if size is None:
        return None, None
    from pab.runtime.request.api import parse_size

    try:
        return parse_size(size)
    except ValueError as exc:
        raise SystemExit(f"pab: --size: {exc}") from None


# ---- pab submit ----------------------------------------------------------------------------------------------------
def _register_submit(subparsers: Any) -> None:
    p = subparsers.add_parser("submit", help="submit a prompt to a server, show progress, save the mp4")
    _add_generation_options(p)
    _add_client_options(p)
    p.add_argument("--model", default=None)
    p.add_argument("--seconds", type=float, default=None, help="duration (frames = seconds x fps, unless --frames)")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    p.set_defaults(func=_submit)


def _submit(args: argparse.Namespace) -> int:
    fields = {
        "prompt": args.prompt, "model": args.model, "size": args.size, "seconds": args.seconds,
        "frames": args.frames, "steps": args.steps, "guidance_scale": args.guidance_scale, "seed": args.seed,
        "negative_prompt": args.negative_prompt, "fps": args.fps, "pab": _json_or_str(args.pab),
    }
    deadline = time.monotonic() + args.timeout
    with _client(args) as client:
        video = _check(client.post("/v1/videos", json={k: v for k, v in fields.items() if v is not None}))
        print(f"submitted {video['id']} ({video['frames']} frames {video['size']}, seed {video['seed']})",
              file=sys.stderr)
        while video["status"] in ("queued", "in_progress"):
            progress_bar(video["progress"], video["status"])
            if time.monotonic() > deadline:
                raise SystemExit(f"\npab: gave up after {args.timeout:g} s; the job {video['id']} keeps running")
            response = client.get(f"/v1/videos/{video['id']}")
            time.sleep(int(response.headers.get("openai-poll-after-ms", 1000)) / 1000)
            video = _check(response)
        progress_bar(video["progress"], video["status"])
        print(file=sys.stderr)
        if video["status"] != "completed":
            error = video.get("error") or {}
            raise SystemExit(f"pab: job {video['id']} {video['status']}: {error.get('message')}")
        content = client.get(f"/v1/videos/{video['id']}/content")
        if content.status_code >= 400:
            _check(content)
    output = args.output or f"{video['id']}.mp4"
    Path(output).write_bytes(content.content)
    print(f"wrote {output} ({len(content.content)} bytes)\n{_stats_line(video.get('stats'))}")
    return 0


def _json_or_str(value: str | None) -> Any:
    if value is not None and value.lstrip().startswith("{"):
        return json.loads(value)
    return value


# ---- pab status ----------------------------------------------------------------------------------------------------
def _register_status(subparsers: Any) -> None:
    p = subparsers.add_parser("status", help="server health and recent jobs, or one job")
    p.add_argument("video_id", nargs="?", help="show this job in full")
    p.add_argument("--limit", type=int, default=10, help="how many recent jobs to list")
    _add_client_options(p)
    p.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.video_id:
            print(json.dumps(_check(client.get(f"/v1/videos/{args.video_id}")), indent=2))
            return 0
        health = client.get("/health")
        if health.status_code == 503 and health.json().get("status") == "starting":
            print(f"{args.url}: starting (the model is still loading)")
            return 1
        _check(health)
        models = [m["id"] for m in _check(client.get("/v1/models"))["data"]]
        print(f"{args.url}: {health.json()['status']}; models: {', '.join(models)}")
        for v in _check(client.get("/v1/videos", params={"limit": args.limit}))["data"]:
            print(f"{v['id']}  {v['status']:<11} {v['progress']:>3}%  {v['size']:>9} {v['frames']:>3}f  "
                  f"{v['prompt'][:50]}")
    return 0


# ---- entry point ---------------------------------------------------------------------------------------------------
BUILTIN_COMMANDS: tuple[Callable[[Any], None], ...] = (
    _register_serve, _register_generate, _register_submit, _register_status,
)


def _plugin_registrars() -> list[Callable[[Any], None]]:
    """`register` of every module in `serve_app.commands` (helpers add subcommands there)."""
    from serve_app import commands

    registrars = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "register"):
            registrars.append(module.register)
    return registrars


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pab", description="pab-serve: fast DiT video generation and serving")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in (*BUILTIN_COMMANDS, *_plugin_registrars()):
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a request, PAB or config error ends it with one line naming the field, not a traceback."""
    from pydantic import ValidationError

    from serve_app.console import error_line

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, ValidationError) as exc:  # RequestError, PABConfigError, ModelLoadError are ValueErrors
        raise SystemExit(f"pab {args.command}: {error_line(exc)}") from None


if __name__ == "__main__":
    sys.exit(main())
