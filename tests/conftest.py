"""Shared fixtures. Registries are process-global: tests that register metrics, evolvers or filters
must not leak them into later tests (the demo, for one, lists every paper metric)."""

import pytest

from openrlhf_eva.creator import registry


@pytest.fixture(autouse=True)
def restore_registries():
    saved = {reg: dict(reg._objects) for reg in registry.ALL_REGISTRIES}
    yield
    for reg, objects in saved.items():
        reg._objects.clear()
        reg._objects.update(objects)
