"""Shared fixtures: the tests' own archives and temporary git+DVC copies of this project."""

import atexit
import collections
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.archives import write_cifar

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["stages", "dvc.yaml", "params.yaml", ".dvc/plots", ".dvc/config", ".dvcignore", ".gitignore"]
# a study small enough for a test: 1/8 of the channels, 2 epochs, 2 activations, 1 seed
TINY = {
    "model": {"width": 0.125},
    "grid": {"dataset": ["cifar10"], "activation": ["relu", "elu"], "batch_norm": [False], "seed": [0]},
    "train": {
        "epochs": 2,
        "batch_size": 32,
        "learning_rate": 0.05,
        "validation": 40,
        "limit": None,
        "precision": "float32",
        "probe_images": 32,
    },
    "evaluate": {"batch_size": 100},
}
ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "DVC_NO_ANALYTICS": "1",
    "PYTHONPATH": "",
}


# what a backend's processes run with: under JAX, an interpreter where TensorFlow is not installed, as on the
# GPU machines (tests/without_tensorflow/sitecustomize.py hides it)
BACKEND_ENV = {"tensorflow": ENV, "jax": {**ENV, "PYTHONPATH": str(ROOT / "tests" / "without_tensorflow")}}


def run(args, cwd, check=True, timeout=900, env=ENV):
    """Runs a command (a list) in cwd; returns the CompletedProcess with stdout and stderr merged."""
    p = subprocess.run(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout[-6000:]}")
    return p


def dvc(*args, cwd, check=True):
    return run([sys.executable, "-m", "dvc", *args], cwd, check)


def git(*args, cwd, check=True):
    return run(["git", *args], cwd, check)


def locked_stages(repo):
    """The stage names dvc.lock records, read while DVC may be writing it: DVC rewrites the file in place,
    so a poll can find it empty or cut mid-line; either reads as no stage (a later poll sees it whole)."""
    try:
        lock = yaml.safe_load(Path(repo, "dvc.lock").read_text())
    except (FileNotFoundError, yaml.YAMLError):
        return set()
    return set(lock.get("stages") or {}) if isinstance(lock, dict) else set()


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def merge(base, over):
    for k, v in over.items():
        base[k] = merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


def set_params(repo, **over):
    """Deep-merges over into repo/params.yaml."""
    p = Path(repo, "params.yaml")
    p.write_text(yaml.safe_dump(merge(yaml.safe_load(p.read_text()), over), sort_keys=False))


@functools.cache
def _initialised():
    """An empty repo after `git init` and `dvc init`, made once per test session: make_project copies it (each
    `dvc init` is a Python start of DVC, seconds on a 2-core machine)."""
    path = Path(tempfile.mkdtemp(prefix="git-dvc-template-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    git("init", "-q", cwd=path)
    dvc("init", "-q", cwd=path)
    return path


def make_project(dest, archive, params=None):
    """A git+DVC repo at dest holding this project, with params.yaml pointed at archive; first commit made
    (dvclive's Live() needs one)."""
    dest = Path(dest)
    shutil.copytree(
        _initialised(), dest, symlinks=True, dirs_exist_ok=True
    )  # first: the project's .dvc/ files win
    for f in PROJECT_FILES:
        src = ROOT / f
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest / f, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        else:
            shutil.copy(src, dest / f)
    set_params(
        dest,
        **merge(
            merge(merge({}, TINY), {"data": {"cifar10": {"url": str(archive), "md5": md5(archive)}}}),
            params or {},
        ),
    )
    git("add", "-A", cwd=dest)
    git("commit", "-qm", "project", cwd=dest)
    return dest


@pytest.fixture(scope="session")
def cifar10_archive(tmp_path_factory):
    """A learnable cifar10 archive in the python layout: 20 train and 5 test images per class."""
    path = tmp_path_factory.mktemp("archives") / "cifar-10-python.tar.gz"
    write_cifar(path, "cifar10", "python", train_per_class=20, test_per_class=5)
    return path


@pytest.fixture
def project(tmp_path, cifar10_archive):
    return make_project(tmp_path / "repo", cifar10_archive)


def pytest_collection_modifyitems(items):
    """The modules with the most e2e tests first: pytest-xdist (--dist loadscope) hands whole modules to its
    workers in this order, so the long ones start at once and the fast ones fill the gaps at the end."""
    e2e = collections.Counter(item.module.__name__ for item in items if item.get_closest_marker("e2e"))
    items.sort(key=lambda item: -e2e[item.module.__name__])  # stable: each module's own order is kept


def run_stage(repo, module, *args, env=None, timeout=120):
    """(exit status, stderr lines, seconds) of `python -m stages.<module>` in repo."""
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", f"stages.{module}", *args],
        cwd=repo,
        env=env or ENV,
        text=True,
        capture_output=True,
        timeout=timeout,
    )
    return p.returncode, [line for line in p.stderr.splitlines() if line.strip()], time.monotonic() - t0
