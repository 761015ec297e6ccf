"""`pab profile`, `pab calibrate`, `pab eval` end to end on an embedded random-weight model."""

import json

from pab.runtime.tools.cli import main
from pab.config import PABConfig
from serve_app.entrypoints.cli import build_parser

COMMON = ["--model", "tiny-latte", "--prompt", "a cat runs", "--seeds", "0", "--steps", "6"]


def test_registered_in_the_pab_console_script():
    parser = build_parser()
    for command in ("profile", "calibrate", "eval"):
        args = parser.parse_args([command, "--profile", "p.json"] if command == "calibrate" else [command])
        assert args.func.__module__ == "pab.runtime.tools.cli"


def test_profile_calibrate_eval(tmp_path, capsys):
    prof, cal = tmp_path / "p.json", tmp_path / "cal.json"
    assert main(["profile", *COMMON, "-o", str(prof)]) == 0
    data = json.loads(prof.read_text())
    assert set(data["kinds"]) == {"spatial", "temporal", "cross"} and len(data["timesteps"]) == 5
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"

    code = main(["calibrate", *COMMON, "--profile", str(prof), "--max-trials", "2", "-o", str(cal)])
    report = json.loads((tmp_path / "cal.report.json").read_text())
    assert code in (0, 1) and report["verdict"] in capsys.readouterr().out
    configs = []
    if code == 0:
        configs = ["--config", str(cal)]
        assert PABConfig.from_dict(json.loads(cal.read_text())).name == "calibrated"

    out = tmp_path / "eval.json"
    assert main(["eval", *COMMON, "--presets", "PAB-246", "none", *configs, "-o", str(out),
                 "--markdown", str(tmp_path / "t.md")]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows][:3] == ["full (no PAB)", "PAB-246", "none"]
    assert rows[2]["psnr"] == float("inf") and rows[2]["broadcast"] == 0.0  # "none" reproduces the full model
    assert 0 < rows[1]["broadcast"] < 1 and rows[1]["accuracy"] is None  # "a cat runs" names no colour/shape
    assert "| PAB-246 |" in (tmp_path / "t.md").read_text()
