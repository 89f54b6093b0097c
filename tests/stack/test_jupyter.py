"""Saving notebooks from the jupyter container: docker/jupyter-entrypoint.sh, run for real.

On a Linux host the bind-mounted notebooks folder keeps the host user's uid, whatever it is. The
entrypoint starts as root, adopts the folder owner's uid and gid, and drops to them before
JupyterLab starts. Here it runs in a private mount namespace, with copies of /etc/passwd and
/etc/group bound over the real ones (it adds entries for an unknown uid) and temporary folders in
place of the container's, and starts a stand-in `jupyter` that reports who it runs as and saves a
file. This needs root, as the container's start does; elsewhere the tests are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack.test_compose import ROOT, services
from tests.stack.test_images import chain, command, last

ENTRYPOINT = ROOT / "docker" / "jupyter-entrypoint.sh"
IMAGE_UID = 10001
HOST_UID, HOST_GID = 4242, 4343  # a host user the image knows nothing about

STAND_IN = """#!/usr/bin/env bash
# Plays `jupyter lab`: reports who it runs as, then saves a notebook and a checkpoint, as JupyterLab would.
set -euo pipefail
mkdir -p "$PULSE_NOTEBOOKS_DIR/.ipynb_checkpoints" "$HOME/.local/share/jupyter/runtime" "$PULSE_DATA_DIR/checkpoints"
echo '{}' > "$PULSE_NOTEBOOKS_DIR/saved.ipynb"
echo '{}' > "$PULSE_NOTEBOOKS_DIR/.ipynb_checkpoints/saved-checkpoint.ipynb"
touch "$PULSE_DATA_DIR/checkpoints/offsets"
printf '{"uid": %s, "gid": %s, "home": "%s", "user": "%s", "name": "%s", "args": "%s"}\\n' \\
  "$(id -u)" "$(id -g)" "$HOME" "${USER:-}" "$(id -un)" "$*"
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("setpriv") is None,
                                reason="the entrypoint starts as root: needs root, unshare and setpriv")


@pytest.fixture
def container() -> Iterator[Path]:
    """/home/pulse as the image has it: home and data volume owned by the image's user."""
    # Not under pytest's tmp_path: its root-only parent would stop the adopted uid at the door.
    root = Path(tempfile.mkdtemp(prefix="pulse-jupyter-", dir="/tmp"))
    root.chmod(0o755)
    home = root / "home" / "pulse"
    (home / ".pulse" / "checkpoints").mkdir(parents=True)
    (home / "notebooks").mkdir()
    (home / ".bashrc").write_text("")
    for path in (home, home / ".bashrc", home / ".pulse", home / ".pulse" / "checkpoints"):
        os.chown(path, IMAGE_UID, IMAGE_UID)
    (root / "home").chmod(0o755)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "jupyter").write_text(STAND_IN)
    (bin_dir / "jupyter").chmod(0o755)
    # The image installs the entrypoint on PATH; a checkout under a root-only home would stop the
    # adopted uid from reading it there, so the test runs a copy from the stand-in's bin.
    shutil.copy(ENTRYPOINT, bin_dir / "pulse-jupyter-entrypoint")
    (bin_dir / "pulse-jupyter-entrypoint").chmod(0o755)
    for name in ("passwd", "group"):
        shutil.copy(f"/etc/{name}", root / name)
    try:
        yield root
    finally:
        shutil.rmtree(root)


def _start(root: Path, *, as_uid: int | None = None) -> dict[str, object]:
    home = root / "home" / "pulse"
    env = {"PATH": f"{root / 'bin'}:/usr/local/bin:/usr/bin:/bin", "PULSE_HOME_DIR": str(home),
           "PULSE_NOTEBOOKS_DIR": str(home / "notebooks"), "PULSE_DATA_DIR": str(home / ".pulse")}
    start = [str(root / "bin" / "pulse-jupyter-entrypoint"), "jupyter", "lab", "--ip=0.0.0.0"]
    if as_uid is not None:  # `user:` in compose: the container starts as that user, HOME set by Docker
        start = ["setpriv", f"--reuid={as_uid}", f"--regid={as_uid}", "--clear-groups", *start]
        env["HOME"] = str(home)
    script = 'mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && shift 2 && exec "$@"'
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script, "_",
                             str(root / "passwd"), str(root / "group"), *start],
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    reported: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return reported


def _owner(path: Path) -> tuple[int, int]:
    return path.stat().st_uid, path.stat().st_gid


@needs_root
def test_jupyter_runs_as_the_owner_of_the_notebooks_folder(container: Path) -> None:
    home = container / "home" / "pulse"
    notebooks = home / "notebooks"
    os.chown(notebooks, HOST_UID, HOST_GID)
    notebooks.chmod(0o755)  # the usual checkout: writable by its owner only
    # A file someone else owns in the host folder keeps its owner: the folder is never chowned.
    (notebooks / "theirs.ipynb").write_text("{}")
    os.chown(notebooks / "theirs.ipynb", 5555, 5555)

    ran = _start(container)

    assert (ran["uid"], ran["gid"]) == (HOST_UID, HOST_GID)
    assert ran["home"] == str(home) and ran["user"] == ran["name"] == f"pulse-{HOST_UID}"
    assert ran["args"] == "lab --ip=0.0.0.0", "root is not needed, so JupyterLab gets no --allow-root"
    assert _owner(notebooks / "saved.ipynb") == (HOST_UID, HOST_GID)
    assert _owner(notebooks / ".ipynb_checkpoints" / "saved-checkpoint.ipynb") == (HOST_UID, HOST_GID)
    assert _owner(notebooks / "theirs.ipynb") == (5555, 5555)
    # HOME and the data volume (with what an earlier run left there) now belong to that user.
    for path in (home, home / ".bashrc", home / ".pulse", home / ".pulse" / "checkpoints" / "offsets"):
        assert _owner(path) == (HOST_UID, HOST_GID), path
    assert f"pulse-{HOST_UID}:x:{HOST_UID}:{HOST_GID}:" in (container / "passwd").read_text()


@needs_root
def test_a_root_owned_folder_open_to_all_needs_no_root(container: Path) -> None:
    notebooks = container / "home" / "pulse" / "notebooks"
    os.chown(notebooks, 0, 0)
    notebooks.chmod(0o777)
    ran = _start(container)
    assert (ran["uid"], ran["gid"]) == (IMAGE_UID, IMAGE_UID)
    assert _owner(notebooks / "saved.ipynb") == (IMAGE_UID, IMAGE_UID)


@needs_root
def test_a_folder_only_root_can_write_gets_root(container: Path) -> None:
    # Rootless Docker and Podman map the host user to root in the container.
    notebooks = container / "home" / "pulse" / "notebooks"
    os.chown(notebooks, 0, 0)
    notebooks.chmod(0o755)
    ran = _start(container)
    assert (ran["uid"], ran["gid"]) == (0, 0)
    assert str(ran["args"]).endswith("--allow-root"), "JupyterLab refuses to run as root without it"


@needs_root
def test_a_container_started_as_a_chosen_user_stays_that_user(container: Path) -> None:
    notebooks = container / "home" / "pulse" / "notebooks"
    os.chown(notebooks, IMAGE_UID, IMAGE_UID)
    ran = _start(container, as_uid=IMAGE_UID)
    assert ran["uid"] == IMAGE_UID
    assert (container / "passwd").read_text() == Path("/etc/passwd").read_text()


def test_the_jupyter_image_starts_through_the_entrypoint() -> None:
    assert last("jupyter", "ENTRYPOINT") == '["pulse-jupyter-entrypoint"]'
    copies = [args for stage in chain("jupyter") for kind, args in stage.body if kind == "COPY"]
    assert "--chmod=0755 docker/jupyter-entrypoint.sh /usr/local/bin/pulse-jupyter-entrypoint" in copies
    # It starts as root (to read the mount and drop privileges), and JupyterLab serves the mounted folder.
    assert last("jupyter", "USER") == "0"
    assert command("jupyter")[:2] == ["jupyter", "lab"]
    assert "--ServerApp.root_dir=/home/pulse/notebooks" in command("jupyter")
    jupyter = services()["jupyter"]
    assert "user" not in jupyter, "a fixed user: would bypass the entrypoint's choice"
    mounts = {m["target"]: m for m in jupyter["volumes"]}
    assert mounts["/home/pulse/notebooks"]["type"] == "bind"
    assert mounts["/home/pulse/notebooks"]["source"] == str(ROOT / "notebooks")
    # The entrypoint's defaults are the container's paths.
    script = ENTRYPOINT.read_text()
    assert '"${PULSE_NOTEBOOKS_DIR:-/home/pulse/notebooks}"' in script
    assert jupyter["environment"]["PULSE_DATA_DIR"] in mounts
    assert f'"${{PULSE_DATA_DIR:-{jupyter["environment"]["PULSE_DATA_DIR"]}}}"' in script


def test_notebook_checkpoints_are_not_committed() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", "notebooks/.ipynb_checkpoints/pulse-checkpoint.ipynb"],
                             cwd=ROOT, check=False)
    assert ignored.returncode == 0, ".ipynb_checkpoints/ is not git-ignored"
