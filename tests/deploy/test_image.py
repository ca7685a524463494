"""The Containerfile's layout runs: the files its build stage copies, built and installed
into a fresh venv the way it does, serve a service outside the repository."""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from services.edge.envoy import envoy_binary
from tests.e2e.processes import free_port, wait_serving
from tools.k8s_edge import transcoder

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "Containerfile"

pytestmark = pytest.mark.integration


def build_stage_copies() -> list[tuple[list[str], str]]:
    """The (sources, destination) of each COPY of the build context in the Containerfile."""
    copies = []
    for line in CONTAINERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            words = shlex.split(line)
            copies.append((words[1:-1], words[-1]))
    return copies


def test_the_containerfile_passes_its_linter() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(CONTAINERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_final_stage_runs_agentrt_as_a_non_root_user() -> None:
    final = CONTAINERFILE.read_text().split("\nFROM ")[-1]
    assert "USER 10001:10001" in final
    assert 'ENTRYPOINT ["agentrt"]' in final
    assert 'CMD ["serve", "gateway"]' in final
    assert "COPY --from=build /opt/agentrt /opt/agentrt" in final
    # Nothing is built or installed there: no compiler, no package manager left behind.
    assert "pip install" not in final and "apt-get" not in final
    assert "pip uninstall --yes pip" in final


@dataclass(frozen=True)
class Installed:
    """The package built from the Containerfile's copies, installed into a fresh venv."""

    prefix: Path
    python: Path
    agentrt: str
    work: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp_path = tmp_path_factory.mktemp("image")
    source = tmp_path / "src"
    source.mkdir()
    copies = build_stage_copies()
    assert copies, "the Containerfile copies nothing"
    for sources, destination in copies:
        for name in sources:
            target = source / (name if destination.endswith("/") else destination)
            target.parent.mkdir(parents=True, exist_ok=True)
            origin = ROOT / name
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copyfile(origin, target)

    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(source)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    # A fresh venv holding the built package only; its third-party dependencies are the dev
    # venv's (installing them again from the registry would take minutes, and they are not
    # what the Containerfile's layout decides).
    prefix = tmp_path / "opt" / "agentrt"
    venv.create(prefix, with_pip=False)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))
    python = prefix / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-deps", *map(str, wheels.glob("*.whl"))],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "work"
    work.mkdir()
    env = {
        "PATH": f"{prefix / 'bin'}:/usr/bin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
        "AGENTRT_DATA_DIR": str(work / "agentrt"),
    }
    where = subprocess.run(
        [str(python), "-c", "import agentrt, services; print(agentrt.__file__, services.__file__)"],
        env=env, cwd=work, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert all(path.startswith(str(prefix)) for path in where.stdout.split()), where.stdout
    return Installed(prefix, python, str(prefix / "bin" / "agentrt"), work, env)


def test_the_copied_layout_installs_and_serves(
    installed: Installed, tmp_path: Path, pg_dsn: str
) -> None:
    agentrt, work = installed.agentrt, installed.work
    env = {**installed.env, "AGENTRT_DATABASE_URL": pg_dsn}
    migrated = subprocess.run(
        [agentrt, "migrate"], env=env, cwd=work, capture_output=True, text=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stderr
    assert "jobs: 1" in migrated.stdout, migrated.stdout  # the SQL files were installed

    port = free_port()
    log = (tmp_path / "jobs.log").open("wb")
    process = subprocess.Popen(
        [agentrt, "serve", "jobs"],
        env={**env, "AGENTRT_LISTEN_ADDRESS": f"127.0.0.1:{port}"},
        cwd=work, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_serving(f"127.0.0.1:{port}", "agentrt.jobs.v1.JobService", process=process)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, (tmp_path / "jobs.log").read_text()


def test_the_installed_layout_renders_the_edge_that_envoy_accepts(
    installed: Installed, tmp_path: Path
) -> None:
    """The Envoy template and the descriptor set are package data: `agentrt edge` renders
    them outside the repository, and the result names the installed descriptor set."""
    printed = subprocess.run(
        [installed.agentrt, "edge", "--print-config"],
        env=installed.env, cwd=installed.work, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    descriptors = Path(transcoder(yaml.safe_load(printed.stdout))["proto_descriptor"])
    assert descriptors.is_relative_to(installed.prefix), descriptors
    assert descriptors.read_bytes() == (ROOT / "services" / "edge" / "agentrt.binpb").read_bytes()

    rendered = tmp_path / "envoy.yaml"
    rendered.write_text(printed.stdout)
    checked = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(rendered), "--disable-hot-restart"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
