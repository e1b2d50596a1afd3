"""Root filesystems for the base images: a minimal Debian by debootstrap, and a venv of
the workloads' dependencies installed into it (kept as its own layer). Root only."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tomllib
from contextlib import contextmanager
from pathlib import Path

SUITE = "bookworm"  # Python 3.11, as python:3.11-slim-bookworm (the published default base)
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
VENV = "/opt/kuberl"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's path, here and in the tree
# Anything that changes the tree changes this, and so the image key.
RECIPE = f"debootstrap --variant=minbase --include={','.join(PACKAGES)} {SUITE} {MIRROR} v1"
LIBMOUNT_RUN_DIR = Path("/run/mount")
VENV_RECIPE = "pip install --compile; pip uninstall triton; v1"


@contextmanager
def leaves_no_libmount_dir(run_dir: Path = LIBMOUNT_RUN_DIR):
    """Remove libmount's runtime directory afterwards when it was created meanwhile.

    util-linux's mount and umount create /run/mount (for their utab) the first time they
    run on a machine, unless given -n. Tools we do not control (debootstrap mounts /proc
    and /sys into its target) leave it on a machine that had none."""
    existed = run_dir.exists()
    try:
        yield
    finally:
        if not existed and run_dir.is_dir():
            shutil.rmtree(run_dir, ignore_errors=True)


def debootstrap(target: Path) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    with leaves_no_libmount_dir():
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
                        str(target), MIRROR], check=True, stdout=subprocess.DEVNULL)
    # What only the build needed: downloaded packages and apt's lists.
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (target / leftover).glob("*"):
            if p.is_file():
                p.unlink()
    return target


def workload_requirements(pyproject: Path) -> list[str]:
    """The third-party packages of the workload image: the base dependencies and the
    trainer and rollout extras (what `pip install .[trainer,rollout]` would pull)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = [*project["dependencies"], *extras["trainer"], *extras["rollout"]]
    # setuptools/wheel: the Dockerfile builds the project without fetching a build backend.
    reqs += ["setuptools>=69", "wheel"]
    return sorted(set(reqs))


def install_venv(lower: Path, out: Path, requirements: list[str]) -> Path:
    """Create VENV inside `lower` seen through an overlay and return a tree holding only
    VENV (the overlay's upper layer): the base layer stays as debootstrap left it."""
    work = out.with_suffix(".overlay")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    upper, scratch, merged = work / "upper", work / "work", work / "merged"
    for d in (upper, scratch, merged):
        d.mkdir(parents=True)
    pip_cache = Path.home() / ".cache" / "pip"
    pip_cache.mkdir(parents=True, exist_ok=True)
    m = shlex.quote(str(merged))
    script = " && ".join([
        f"mount -n -t overlay overlay -o lowerdir={shlex.quote(str(lower))},upperdir={shlex.quote(str(upper))},"
        f"workdir={shlex.quote(str(scratch))} {m}",
        f"mount -n -t proc proc {m}/proc",
        f"mkdir -p {m}/root/.cache/pip && mount -n --bind {shlex.quote(str(pip_cache))} {m}/root/.cache/pip",
        f"cp /etc/resolv.conf {m}/etc/resolv.conf",
        # The machine's CA bundle: it may hold the certificate of a proxy in front of PyPI.
        f"mount -n --bind {HOST_CA_BUNDLE} {m}{HOST_CA_BUNDLE}",
        f"chroot {m} /usr/bin/python3 -m venv {VENV}",
        f"chroot {m} env -u PIP_FIND_LINKS PIP_CERT={HOST_CA_BUNDLE} {VENV}/bin/pip install --quiet "
        f"--disable-pip-version-check "
        "--compile " + " ".join(shlex.quote(r) for r in requirements),
        # torch's GPU kernel compiler (~0.9 GB): a CPU image never loads it.
        f"chroot {m} {VENV}/bin/pip uninstall --quiet --yes triton",
    ])
    # A private mount namespace: every mount above vanishes with the shell. -n: libmount's
    # utab would otherwise be created on the host's /run (see leaves_no_libmount_dir).
    subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script], check=True)
    (out / "opt").mkdir(parents=True)
    shutil.move(str(upper / VENV.lstrip("/")), out / "opt" / "kuberl")
    shutil.rmtree(work)
    return out
