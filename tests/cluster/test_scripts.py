"""scripts/serve.sh, scripts/setup.sh and scripts/test.sh on a copy of the repository with stand-in system tools:
serving installs no system package and stops no process; the test path installs the pinned Debian packages, and
gives up quietly where it cannot (not root, no apt-get). Nothing here runs the real apt-get or pip."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SCRIPTS = REPO_ROOT / "scripts"
REAL_TOOLS = ("bash", "sh", "env", "dirname", "sha256sum", "cut", "cat", "awk", "grep")


def _pinned() -> list[str]:
    block = re.search(r"TEST_DEB_PACKAGES=\((.*?)\)", (SCRIPTS / "setup.sh").read_text(), re.S).group(1)
    return re.findall(r'"([^"]+)"', block)


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository copy whose .venv is already up to date (so setup.sh's pip step is a no-op), with stand-ins for
    .venv/bin/{python,pab}, scripts/loopback-only and the system tools; every stand-in appends its call to log."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    for name in ("setup.sh", "serve.sh", "test.sh"):
        shutil.copy2(SCRIPTS / name, root / "scripts" / name)
    for name in ("pyproject.toml", "constraints.txt"):
        shutil.copy2(REPO_ROOT / name, root / name)
    venv = root / ".venv" / "bin"
    venv.mkdir(parents=True)
    digest = hashlib.sha256((root / "pyproject.toml").read_bytes() + (root / "constraints.txt").read_bytes()).hexdigest()
    (root / ".venv" / ".pab-serve-installed").write_text(digest + "\n")
    log = tmp_path / "log"
    for name in ("python", "pab"):
        _stub(venv / name, f'echo "{name} $*" >> {log}\n')
    _stub(root / "scripts" / "loopback-only", f'echo "loopback-only $*" >> {log}\n')
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in REAL_TOOLS:
        (tools / name).symlink_to(shutil.which(name))
    _stub(tools / "id", 'echo "${FAKE_UID:-0}"\n')
    for name in ("apt-get", "systemctl", "service", "pkill", "killall"):
        _stub(tools / name, f'echo "{name} $*" >> {log}\n')
    madison = "".join(f'echo "{s.split("=")[0]} | {s.split("=", 1)[1]} | http://deb.debian.org/debian main"\n'
                      for s in _pinned())
    _stub(tools / "apt-cache", f'[ -n "$FAKE_NO_PINS" ] && {{ echo "x | 1.0 | y"; exit 0; }}\n{madison}')
    return root


def _run(repo: Path, script: str, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    tools = repo.parent / "bin"
    done = subprocess.run([str(tools / "bash"), str(repo / "scripts" / script), *args], capture_output=True,
                          text=True, timeout=60, env={"PATH": str(tools), "HOME": str(repo.parent), **env})
    log = repo.parent / "log"
    return done, log.read_text().splitlines() if log.exists() else []


def test_no_script_kills_processes_by_name() -> None:
    for path in [*SCRIPTS.iterdir(), REPO_ROOT / "cluster" / "start-monitoring.sh"]:
        assert not re.search(r"\b(pkill|killall)\b", path.read_text()), path


def test_the_pinned_packages_carry_versions() -> None:
    pinned = _pinned()
    assert {s.split("=")[0] for s in pinned} == {"prometheus", "chromium"}
    assert all(re.fullmatch(r"[a-z0-9.+-]+=[0-9][\w.+~:-]*", s) for s in pinned), pinned


def test_serving_installs_no_system_package_and_stops_nothing(repo: Path) -> None:
    done, calls = _run(repo, "serve.sh", "--port", "8001")
    assert done.returncode == 0, done.stderr
    assert calls == ["pab serve --port 8001"]  # no apt-get, systemctl, service, pkill: only the server itself


def test_the_test_path_installs_the_pinned_debian_packages(repo: Path) -> None:
    done, calls = _run(repo, "test.sh", "-q", "tests/k8s")
    assert done.returncode == 0, done.stderr
    installs = [c for c in calls if c.startswith("apt-get install")]
    assert sorted(c.split()[-1] for c in installs) == sorted(_pinned())
    assert "apt-get update -qq" in calls
    assert "systemctl stop prometheus" in calls  # the package's own service, through its service manager
    assert not [c for c in calls if c.startswith(("pkill", "killall"))]
    assert calls[-1] == "loopback-only .venv/bin/python -m pytest -q tests/k8s"


def test_a_pin_this_machine_does_not_offer_installs_its_own_version_with_a_warning(repo: Path) -> None:
    done, calls = _run(repo, "setup.sh", "--test", FAKE_NO_PINS="1")
    assert done.returncode == 0, done.stderr
    assert sorted(c.split()[-1] for c in calls if c.startswith("apt-get install")) == ["chromium", "prometheus"]
    assert "not in this machine's apt sources" in done.stderr


@pytest.mark.parametrize("why", ["not root", "no apt-get"])
def test_without_root_or_apt_get_the_test_set_up_skips_the_packages_and_succeeds(repo: Path, why: str) -> None:
    env = {"FAKE_UID": "1000"} if why == "not root" else {}
    if why == "no apt-get":
        (repo.parent / "bin" / "apt-get").unlink()
    done, calls = _run(repo, "setup.sh", "--test", **env)
    assert done.returncode == 0, done.stderr
    assert calls == [] and "cannot apt-get them" in done.stderr


def test_packages_already_there_are_not_installed_again(repo: Path) -> None:
    for name in ("prometheus", "chromium"):
        _stub(repo.parent / "bin" / name, "exit 0\n")
    done, calls = _run(repo, "setup.sh", "--test")
    assert done.returncode == 0 and calls == [], (done.stderr, calls)


def test_setup_refuses_unknown_options(repo: Path) -> None:
    done, _ = _run(repo, "setup.sh", "--serve")
    assert done.returncode == 2 and "usage" in done.stderr


def test_constraints_hold_every_direct_pin_at_the_same_version():
    """`constraints.txt` pins the transitive packages; it must agree with pyproject's own pins, or pip fails."""
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    direct = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    lines = [line for line in (REPO_ROOT / "constraints.txt").read_text().splitlines() if line and line[0] != "#"]
    pinned = {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1] for line in lines}
    assert all("==" in line for line in lines)
    for spec in direct:
        name, version = spec.split("==")
        name = name.split("[")[0].lower().replace("_", "-")
        assert pinned.get(name) == version, f"{spec} vs constraints.txt {pinned.get(name)}"
