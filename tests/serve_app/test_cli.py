"""The `pab` console script: parsing, config loading, local generation, and the client commands against the app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pab.runtime.video import decode_video
from serve_app.entrypoints import cli

CONFIG = Path(__file__).resolve().parents[2] / "serve_app" / "configs" / "serve_cpu.yaml"


def test_builtin_commands_and_plugins(tmp_path, monkeypatch):
    from serve_app import commands

    plugin = tmp_path / "hello.py"
    plugin.write_text(
        "def register(subparsers):\n"
        "    p = subparsers.add_parser('hello')\n"
        "    p.set_defaults(func=lambda args: 7)\n"
    )
    monkeypatch.setattr(commands, "__path__", [*commands.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "serve_app.commands.hello", raising=False)
    parser = cli.build_parser()
    choices = parser._subparsers._group_actions[0].choices
    assert {"serve", "generate", "submit", "status", "hello"} <= set(choices)
    assert cli.main(["hello"]) == 7


def test_config_from_serve_yaml_with_overrides():
    config = cli.load_app_config(str(CONFIG), ["sp_degree=1", "limits.max_frames=8", "pab_preset=PAB-246"])
    assert (config.sp_degree, config.limits.max_frames, config.pab_preset) == (1, 8, "PAB-246")
    assert config.limits.max_steps == 200  # untouched fields keep the YAML's value
    with pytest.raises(SystemExit, match="key=value"):
        cli.load_app_config(None, ["sp_degree"])


def test_generate_writes_a_video_without_ray(tmp_path):
    from pab.runtime.tinyvideo.objective import objective_check

    out = tmp_path / "square.mp4"
    script = (
        "import sys\n"
        "from serve_app.entrypoints import cli\n"
        f"code = cli.main(['generate', 'a red square moving left', '--seed', '3', '-o', {str(out)!r}])\n"
        "assert 'ray' not in sys.modules, 'pab generate imported ray'\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    frames = decode_video(out.read_bytes())
    assert frames.shape == (4, 16, 16, 3)  # the default model is the trained tiny-shapes: it draws what was asked
    assert objective_check(frames, ("red", "square", "left")).colour == "red"
    assert "seed 3" in done.stdout and "PAB reference:latte" in done.stdout


@pytest.mark.ray
def test_submit_and_status_against_the_server(pab_app, tmp_path, capsys):
    common = ["--url", pab_app.url, "--api-key", pab_app.config.api_key.get_secret_value()]
    out = tmp_path / "dog.mp4"
    args = ["submit", "a dog jumps", "--steps", "4", "--seed", "2", "--size", "32x32", "-o", str(out), *common]
    assert cli.main(args) == 0
    assert decode_video(out.read_bytes()).shape == (8, 32, 32, 3)
    captured = capsys.readouterr()
    assert "100.0% completed" in captured.err and "PAB reference:latte" in captured.out
    video_id = captured.err.split("submitted ")[1].split()[0]

    assert cli.main(["status", *common]) == 0
    listing = capsys.readouterr().out
    assert "tiny-latte" in listing and video_id in listing
    assert cli.main(["status", video_id, *common]) == 0
    assert '"status": "completed"' in capsys.readouterr().out
    with pytest.raises(SystemExit, match="max_frames"):
        cli.main(["submit", "a dog", "--frames", "64", *common])
