"""Apply the upstream patch series to the pinned OpenRLHF and run upstream's tests on CPU.

    python patches/check.py              # `make patches-check`: apply in a temporary folder, test, clean up
    python patches/check.py --tree DIR   # build the patched tree in DIR and keep it (tests/test_patches.py)

OpenRLHF publishes no sdist and no git host is reachable from here, so the pinned source is the
PyPI wheel: its purelib holds `openrlhf/` and `tests/` as laid out in the upstream repository. The
wheel is unpacked into a fresh git repository (one commit, the pristine base), each patch is
checked with `git apply --check` and applied with `git am`, and then, as upstream's AGENTS.md
asks, `python -m compileall -q openrlhf tests` and `python -m pytest -q` run in the patched tree:
upstream's own tests and the ones the series adds, with this interpreter and the patched tree
first on sys.path. Nothing from openrlhf_eva is imported, so flash_attn and CUDA are missing for
real: the CPU run is itself the test of patches 0001 and 0002.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

OPENRLHF_VERSION = "0.11.2"
PATCHES = Path(__file__).resolve().parent
# Identity for the base commit and `git am`'s committer; authors come from the patches.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "openrlhf-eva",
    "GIT_AUTHOR_EMAIL": "openrlhf-eva@users.noreply.github.com",
    "GIT_COMMITTER_NAME": "openrlhf-eva",
    "GIT_COMMITTER_EMAIL": "openrlhf-eva@users.noreply.github.com",
}


def run(command: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, check=True, env={**os.environ, **GIT_IDENTITY}, **kwargs)


def fetch_wheel(dest: Path) -> Path:
    """The pinned OpenRLHF wheel, through pip and its configured index (never a git host)."""
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
         f"openrlhf=={OPENRLHF_VERSION}", "-d", str(dest)], cwd=dest)  # fmt: skip
    (wheel,) = dest.glob(f"openrlhf-{OPENRLHF_VERSION}-*.whl")
    return wheel


def build_tree(tree: Path, wheel: Path | None = None) -> list[str]:
    """Unpack the wheel into `tree` as a git repository and apply the series; returns the patch names."""
    tree.mkdir(parents=True, exist_ok=False)
    with tempfile.TemporaryDirectory() as scratch:
        wheel = wheel or fetch_wheel(Path(scratch))
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(scratch)
        purelib = Path(scratch) / f"openrlhf-{OPENRLHF_VERSION}.data" / "purelib"
        for name in ("openrlhf", "tests"):
            shutil.copytree(purelib / name, tree / name)
    run(["git", "init", "-q"], cwd=tree)
    run(["git", "add", "-A"], cwd=tree)
    run(["git", "commit", "-q", "-m", f"OpenRLHF {OPENRLHF_VERSION} (PyPI wheel)"], cwd=tree)
    series = sorted(PATCHES.glob("[0-9][0-9][0-9][0-9]-*.patch"))
    for patch in series:
        run(["git", "apply", "--check", str(patch)], cwd=tree)
        run(["git", "am", "-q", str(patch)], cwd=tree)
    return [patch.name for patch in series]


def run_upstream_tests(tree: Path) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
    for command in (
        [sys.executable, "-m", "compileall", "-q", "openrlhf", "tests"],
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
    ):
        print("$", " ".join(command[1:]), flush=True)
        returncode = subprocess.run(command, cwd=tree, env=env).returncode
        if returncode:
            return returncode
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, help="build the patched tree here and keep it (must not exist)")
    parser.add_argument("--wheel", type=Path, help=f"a local openrlhf-{OPENRLHF_VERSION} wheel instead of pip download")
    parser.add_argument("--skip-tests", action="store_true", help="only fetch and apply the series")
    args = parser.parse_args(argv)

    start = time.time()
    scratch = None if args.tree else tempfile.mkdtemp(prefix="openrlhf-patches-")
    tree = args.tree or Path(scratch) / f"openrlhf-{OPENRLHF_VERSION}"
    try:
        applied = build_tree(tree, args.wheel)
        print(f"applied {len(applied)} patches to OpenRLHF {OPENRLHF_VERSION} in {tree}: {', '.join(applied)}")
        returncode = 0 if args.skip_tests else run_upstream_tests(tree)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"patches-check: {'ok' if returncode == 0 else 'FAILED'} in {time.time() - start:.0f} s")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
