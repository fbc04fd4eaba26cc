"""Shared fixtures. Registries are process-global: tests that register metrics, evolvers or filters
must not leak them into later tests (the demo, for one, lists every paper metric)."""

import os

import pytest

from openrlhf_eva import compat
from openrlhf_eva.creator import registry


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
