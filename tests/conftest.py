"""Shared fixtures. Registries are process-global: tests that register metrics, evolvers or filters
must not leak them into later tests (the demo, for one, lists every paper metric)."""

import os

import pytest

from openrlhf_eva import compat
from openrlhf_eva.creator import registry


# `make test` runs two xdist workers, a test file at a time (--dist loadfile --no-loadscope-reorder:
# without it xdist sorts files by test count). Files go out in collection order, so the slowest
# (multi-process runs, a real Ray cluster, the real SmolLM2) go first; otherwise one of them lands
# last and one worker idles. Seconds measured on 2 cores.
SLOW_FILES_FIRST = [
    "test_ray_cpu.py",  # ~140 s: two real Ray clusters
    "test_train_rloo.py",  # ~150 s: two-rank and kill-and-resume runs
    "test_smollm2.py",  # ~100 s: the real SmolLM2 GGUF
    "test_logprobs.py",  # ~90 s: Triton interpreter oracles, ZeRO-3
    "test_patches.py",  # ~60 s: the patched OpenRLHF tree and its tests
    "test_iterate.py",  # ~60 s
    "test_bench.py",  # ~55 s: a task folder end to end
    "test_demo.py",  # ~55 s
    "test_train_dpo.py",  # ~55 s: a two-rank launcher run
    "test_train_rloo_vllm.py",  # ~45 s
    "test_evolve_cli.py",  # ~35 s
]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise


@pytest.fixture(autouse=True)
def restore_registries():
    saved = {reg: dict(reg._objects) for reg in registry.ALL_REGISTRIES}
    yield
    for reg, objects in saved.items():
        reg._objects.clear()
        reg._objects.update(objects)


@pytest.fixture(autouse=True)
def isolated_process_state():
    """Every test leaves the process as it found it: no torch.distributed group, no stale DeepSpeed
    clone of one, and the same environment. In-process trainings set RANK/MASTER_PORT/... (see
    `compat.default_single_process_env`); a later test must pick its own free port, never inherit
    one a destroyed group may still hold, and a later subprocess must not inherit them at all."""
    environ = dict(os.environ)
    # A test that draws from torch's global RNG gets the same draw whatever ran before it.
    import torch

    torch.manual_seed(0)
    yield
    compat.leave_no_process_group()
    for name in set(os.environ) - set(environ):
        del os.environ[name]
    os.environ.update(environ)


@pytest.fixture(scope="session")
def warm_tiny_model(tmp_path_factory):
    """The embedded tiny Llama after a few SFT steps through OpenRLHF (about 30 s, once per session).

    Good enough to give graded rewards a spread (so pairs exist); not a capable model.
    """
    from openrlhf_eva.embedded.warm_start import WarmStartConfig, warm_start

    out = tmp_path_factory.mktemp("warm")
    return out, warm_start(out, WarmStartConfig(seed=0, sft_samples=256, epochs=1), verbose=False)


# Hypothesis draws the same examples on every run: a red CI must be reproducible, never a dice roll.
from hypothesis import settings  # noqa: E402

settings.register_profile("eva", derandomize=True, deadline=None)
settings.load_profile("eva")
