"""Safe defaults: the shipped serve config binds loopback, and `pab serve` / `build_app` refuse HTTP beyond loopback
with auth off unless the config opts in (serve_app/safety.py). No Ray is started here."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve_app.entrypoints import builder, cli
from serve_app.config import AppConfig
from serve_app.safety import UnsafeBindError, check_bind, is_loopback

SERVE_CPU = Path(__file__).resolve().parents[2] / "serve_app" / "configs" / "serve_cpu.yaml"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]", " LOCALHOST "])
def test_loopback_hosts(host):
    assert is_loopback(host)
    check_bind(host, AppConfig())


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "10.0.0.7", "192.168.1.2", "myhost", "example.com", ""])
def test_hosts_beyond_loopback_need_a_key_or_an_explicit_opt_in(host, monkeypatch, caplog):
    with pytest.raises(UnsafeBindError) as info:
        check_bind(host, AppConfig())
    message = str(info.value)
    for words in ("api_key_env", "api_keys", "allow_unauthenticated_public: true", "127.0.0.1"):
        assert words in message
    check_bind(host, AppConfig(api_key_env="PAB_API_KEY"))  # a key is configured: fine (resolved at start)
    check_bind(host, AppConfig(api_keys=[{"tenant": "a", "key_sha256": "0" * 64}]))
    with caplog.at_level("WARNING", logger="ray.serve"):
        check_bind(host, AppConfig(allow_unauthenticated_public=True))
    assert "allow_unauthenticated_public" in caplog.text


def test_the_shipped_cpu_config_serves_loopback_only():
    loaded = yaml.safe_load(SERVE_CPU.read_text())
    host = loaded["http_options"]["host"]
    args = AppConfig.model_validate(loaded["applications"][0]["args"])
    assert is_loopback(host)
    check_bind(host, args)
    with pytest.raises(UnsafeBindError):  # it has no key, so opening it up takes a key (or an explicit opt-in)
        check_bind("0.0.0.0", args)


def test_pab_serve_refuses_a_public_host_without_a_key_before_starting_ray(monkeypatch):
    import ray

    started = []
    monkeypatch.setattr(ray, "init", lambda *a, **k: started.append(a))
    with pytest.raises(SystemExit, match="refusing to serve HTTP on '0.0.0.0'"):
        cli.main(["serve", "--host", "0.0.0.0", "--config", str(SERVE_CPU)])
    monkeypatch.setenv("PAB_BIND_HOST", "0.0.0.0")  # scripts/serve.sh passes the host this way
    with pytest.raises(SystemExit, match="allow_unauthenticated_public"):
        cli.main(["serve"])
    assert started == []


def test_pab_serve_warns_that_a_key_on_the_command_line_is_deprecated(capsys):
    with pytest.raises(SystemExit, match="^pab serve: sp_degree: "):  # one line naming the field, before Ray starts;
        cli.main(["serve", "api_key=sk-in-ps", "sp_degree=zero"])  # the warning came first
    err = capsys.readouterr().err
    assert "api_key=... on the command line is deprecated" in err and "api_key_env=NAME" in err
    assert "sk-in-ps" not in err


def test_build_app_checks_the_host_serve_binds(monkeypatch):
    monkeypatch.setattr(builder, "serve_http_host", lambda: "0.0.0.0")
    with pytest.raises(UnsafeBindError):
        builder.build_app(AppConfig())
    with pytest.raises(UnsafeBindError):
        builder.build_app({"model": "tiny-latte"})  # the dict args of `serve run` / a serve config YAML
    assert builder.build_app(AppConfig(api_key_env="PAB_API_KEY")) is not None
    assert builder.build_app(AppConfig(allow_unauthenticated_public=True)) is not None
    monkeypatch.setattr(builder, "serve_http_host", lambda: "127.0.0.1")
    assert builder.build_app(AppConfig()) is not None


def test_without_a_running_serve_the_host_is_the_serve_default_and_asking_starts_no_ray():
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    code = (
        "import ray\n"
        "from ray.serve.config import HTTPOptions\n"
        "from serve_app.safety import serve_http_host\n"
        "print(serve_http_host() == HTTPOptions().host, ray.is_initialized())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "False"], done.stderr[-2000:]
