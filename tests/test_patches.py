"""The upstream patch series (patches/) against the pinned OpenRLHF, and the plugin on top of it.

`patches/check.py --tree DIR` fetches the OpenRLHF 0.11.2 wheel with pip, applies the series with
`git apply --check` + `git am`, and runs upstream's own tests plus the series' new ones on CPU
(what `make patches-check` runs). The plugin's seam-sensitive tests then run again in a fresh
interpreter with the patched tree first on sys.path, so they cover the official seams; this
session covers the released OpenRLHF.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tests whose code path switches on `openrlhf_eva.compat.seams`. The multi-process runs (slow) are
# left to the main session: the single-process ones already take every switched branch.
SEAM_TESTS = ["tests/test_compat.py", "tests/test_train_ppo_ray.py", "tests/solve/test_train_dpo.py"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def patched_tree(tmp_path_factory):
    tree = tmp_path_factory.mktemp("patches") / "openrlhf"
    run = subprocess.run([sys.executable, str(ROOT / "patches" / "check.py"), "--tree", str(tree)],
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    return tree, run


def test_series_applies_and_upstream_tests_pass_on_cpu(patched_tree):
    _, run = patched_tree
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    series = sorted(path.name for path in (ROOT / "patches").glob("0*.patch"))
    assert f"applied {len(series)} patches" in output and all(name in output for name in series)
    assert " passed" in output and " failed" not in output


def test_plugin_passes_its_seam_tests_on_patched_openrlhf(patched_tree):
    tree, run = patched_tree
    if run.returncode:
        pytest.fail("the series did not apply or its tests failed: see the test above")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
    code = "import openrlhf, openrlhf_eva; print(openrlhf.__file__, openrlhf_eva.compat.status())"
    probe = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert probe.stdout.startswith(str(tree)), probe.stdout + probe.stderr
    assert "'flash_attn_standin': False, 'cuda_guards': False" in probe.stdout

    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                            *SEAM_TESTS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert tests.returncode == 0, (tests.stdout + tests.stderr)[-4000:]
    assert " passed" in tests.stdout and " failed" not in tests.stdout
