import pytest
import torch

from openrlhf_eva.creator import METRICS, PluginError, Registry, UnknownNameError, informativeness, load_plugin


def test_get_unknown_name_names_kind_and_choices():
    registry = Registry("widget")
    registry.register("alpha")(len)
    registry.register("beta")(abs)
    with pytest.raises(UnknownNameError) as caught:
        registry.get("gamma")
    message = str(caught.value)
    assert message == "unknown widget 'gamma'; available: alpha, beta"
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, ValueError)


def test_empty_registry_error_and_contains():
    registry = Registry("thing")
    with pytest.raises(KeyError, match=r"available: \(none\)"):
        registry.get("x")
    assert "x" not in registry
    assert registry.register("x")(max) is max
    assert "x" in registry and registry.get("x") is max and registry.names() == ["x"]


def test_duplicate_registration_needs_override():
    registry = Registry("thing")
    registry.register("x")(min)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("x")(max)
    registry.register("x", override=True)(max)
    assert registry.get("x") is max
    with pytest.raises(ValueError, match="non-empty string"):
        registry.register("")


def test_plugin_registers_metric(tmp_path):
    plugin = tmp_path / "my_metric.py"
    plugin.write_text(
        "from openrlhf_eva.creator import register_metric\n"
        "@register_metric('test_plugin_best')\n"
        "def best(rewards, valid):\n"
        "    return rewards.masked_fill(~valid, 0).amax(dim=1).clamp(min=0)\n"
    )
    module = load_plugin(plugin)
    assert load_plugin(str(plugin)) is module  # a second load is a no-op, not a duplicate registration
    out = informativeness([[1.0, float("nan"), 3.0], [-1.0, -2.0, float("nan")]], "test_plugin_best")
    assert out.tolist() == [3.0, 0.0]


def test_missing_plugin_file(tmp_path):
    missing = tmp_path / "nope.py"
    with pytest.raises(PluginError, match="nope.py does not exist"):
        load_plugin(missing)


def test_plugin_that_raises_names_file_and_error_and_rolls_back(tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text(
        "from openrlhf_eva.creator import register_metric\n"
        "register_metric('test_plugin_half')(lambda r, v: r.sum(1))\n"
        "1 / 0\n"
    )
    with pytest.raises(PluginError) as caught:
        load_plugin(plugin)
    assert str(plugin) in str(caught.value) and "ZeroDivisionError" in str(caught.value)
    assert isinstance(caught.value.__cause__, ZeroDivisionError)
    assert "test_plugin_half" not in METRICS  # the half-done registration was undone

    plugin.write_text(
        "from openrlhf_eva.creator import register_metric\n"
        "register_metric('test_plugin_half')(lambda r, v: v.sum(1).double())\n"
    )
    load_plugin(plugin)  # the fixed file now loads, its name is free again
    assert informativeness(torch.tensor([[1.0, 2.0]]), "test_plugin_half").tolist() == [2.0]


def test_plugin_syntax_error(tmp_path):
    plugin = tmp_path / "syntax.py"
    plugin.write_text("def broken(:\n")
    with pytest.raises(PluginError, match="syntax.py failed to import: SyntaxError"):
        load_plugin(plugin)
