import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from openrlhf_eva.creator import UnknownNameError, register_sampler, sample_informative

# Upper 0.1% points of the chi-square distribution (from standard tables).
CHI2_CRITICAL_999 = {4: 18.467, 5: 20.515}


def chi_square(counts: np.ndarray, expected: np.ndarray) -> float:
    return float(((counts - expected) ** 2 / expected).sum())


def test_weighted_k1_frequencies_match_info():
    info = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 10.0])
    generator = torch.Generator().manual_seed(0)
    draws = 20000
    counts = np.zeros(len(info))
    for _ in range(draws):
        counts[sample_informative(info, 1, generator=generator).item()] += 1
    assert counts[4] == 0  # a zero weight is never drawn while positive weights remain
    positive = info.numpy() > 0
    expected = draws * info.numpy()[positive] / info.sum().item()
    assert chi_square(counts[positive], expected) < CHI2_CRITICAL_999[positive.sum() - 1]


def test_all_zero_info_is_uniform():
    generator = torch.Generator().manual_seed(1)
    counts = np.zeros(6)
    for _ in range(6000):
        counts[sample_informative(torch.zeros(6), 1, generator=generator).item()] += 1
    assert chi_square(counts, np.full(6, 1000.0)) < CHI2_CRITICAL_999[5]


def test_fewer_positive_than_k_takes_all_positives():
    info = [0.0, 5.0, 0.0, 0.0, 3.0]
    generator = torch.Generator().manual_seed(2)
    fills = set()
    for _ in range(50):
        picked = sample_informative(info, 3, generator=generator).tolist()
        assert set(picked[:2]) == {1, 4} and len(set(picked)) == 3
        fills.add(picked[2])
    assert fills == {0, 2, 3}


def test_greedy_is_top_k_with_index_tie_break():
    info = [1.0, 5.0, 5.0, 0.0, 3.0, 5.0]
    assert sample_informative(info, 4, mode="greedy").tolist() == [1, 2, 5, 4]
    assert sample_informative([0.0, 0.0, 0.0], 2, mode="greedy").tolist() == [0, 1]


def test_same_seed_same_draws_and_seeds_differ():
    info = torch.rand(50, generator=torch.Generator().manual_seed(3))
    for mode in ("weighted", "uniform"):
        draws = [sample_informative(info, 10, mode, torch.Generator().manual_seed(seed)) for seed in (7, 7, 8)]
        assert torch.equal(draws[0], draws[1])
        assert not torch.equal(draws[0], draws[2])


def test_k_zero_and_full():
    empty = sample_informative([1.0, 2.0], 0)
    assert empty.dtype == torch.long and empty.shape == (0,)
    full = sample_informative([1.0, 0.0, 2.0], 3, generator=torch.Generator().manual_seed(0))
    assert sorted(full.tolist()) == [0, 1, 2]


@pytest.mark.parametrize(
    "info, k, message",
    [
        ([1.0, 2.0], 3, r"k must be an int in \[0, 2\]"),
        ([1.0, 2.0], -1, r"k must be an int in \[0, 2\]"),
        ([1.0, 2.0], 1.0, r"k must be an int"),
        ([1.0, float("nan")], 1, "finite and >= 0"),
        ([1.0, -0.5], 1, "finite and >= 0"),
        ([[1.0, 2.0]], 1, r"1-D, got shape \(1, 2\)"),
    ],
)
def test_bad_arguments(info, k, message):
    with pytest.raises(ValueError, match=message):
        sample_informative(info, k)


def test_unknown_mode_and_custom_sampler():
    with pytest.raises(UnknownNameError, match="unknown sampler 'best'; available: greedy, uniform, weighted"):
        sample_informative([1.0], 1, mode="best")

    @register_sampler("test_last", override=True)
    def last(info, k, generator):
        return torch.arange(len(info) - k, len(info))

    assert sample_informative([1.0, 2.0, 3.0], 2, mode="test_last").tolist() == [1, 2]

    register_sampler("test_repeat", override=True)(lambda info, k, generator: torch.zeros(k, dtype=torch.long))
    with pytest.raises(ValueError, match="must return 2 distinct indices"):
        sample_informative([1.0, 2.0, 3.0], 2, mode="test_repeat")


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    st.lists(st.sampled_from([0.0, 0.5, 1.0, 7.0, 1e-9, 1e6]), min_size=1, max_size=30),
    st.integers(0, 30),
    st.sampled_from(["weighted", "greedy", "uniform"]),
    st.integers(0, 2**31),
)
def test_indices_are_distinct_and_in_range(info, k, mode, seed):
    k = min(k, len(info))
    picked = sample_informative(info, k, mode, torch.Generator().manual_seed(seed))
    assert picked.dtype == torch.long and picked.shape == (k,)
    assert len(set(picked.tolist())) == k and all(0 <= i < len(info) for i in picked.tolist())
