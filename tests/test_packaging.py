"""The package builds as a wheel that installs into an isolated environment and runs there,
without the repository (as `pipx install .` would use it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT

pytestmark = pytest.mark.package  # downloads the dependencies from the package index: ~30-60 s


def run(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a command outside the repository with no PYTHONPATH, failing loudly."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args}: {result.stderr[-2000:]}"
    return result


def test_the_wheel_installs_in_isolation_and_runs_without_the_repo(tmp_path: Path) -> None:
    """A wheel built from a copy of the sources installs into a fresh venv (no system site
    packages); from a directory outside the repo, `fyno-import --version`, `mapping schema` and
    an import into the built-in emulator work, and `importer` comes from that venv."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "importer", source / "importer", ignore=shutil.ignore_patterns("__pycache__")
    )
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, source, cwd=tmp_path)
    (wheel,) = dist.glob("fyno_import-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "importer/cli.py" in names and not any(n.startswith(("tests/", "bench/")) for n in names)

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=tmp_path)

    work = tmp_path / "elsewhere"
    work.mkdir()
    tool = venv / "bin" / "fyno-import"
    assert run(tool, "--version", cwd=work).stdout.strip() == f"fyno-import, version {version}"
    schema = json.loads(run(tool, "mapping", "schema", cwd=work).stdout)
    assert schema["title"] == "fyno-import mapping"
    where = run(
        venv / "bin" / "python", "-c", "import importer; print(importer.__file__)", cwd=work
    )
    assert Path(where.stdout.strip()).is_relative_to(venv)

    (work / "users.csv").write_text("user_id,plan\nu-1,pro\nu-2,free\n")
    (work / "m.yaml").write_text("distinct_id: user_id\nproperties:\n  - {column: plan, op: set}\n")
    result = run(tool, "run", "users.csv", "-m", "m.yaml", "--emulator", "--json", cwd=work)
    summary = json.loads(result.stdout)
    assert summary["exit_code"] == 0 and summary["items_sent"] == 2
