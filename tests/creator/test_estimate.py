import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from openrlhf_eva.creator import METRICS, UnknownNameError, informativeness, register_metric
from openrlhf_eva.creator.estimate import EPS, FLOAT32_MAX

NAN, INF = float("nan"), float("inf")
BUILT_INS = ["A_min", "A_avg", "A_dis", "var", "avg", "inv_avg", "inv_A_min", "uniform"]

# Rows and their hand-computed values, in BUILT_INS order.
CASES = {
    "plain [1, 4, 2, 5]": ([1, 4, 2, 5], [4, 2, 1, 2.5, 3, 1 / 3, 0.25, 1]),
    "missing [nan, 2, -inf, 6]": ([NAN, 2, -INF, 6], [4, 2, 4, 4, 4, 0.25, 0.25, 1]),
    "tie for max [3, 3, 1]": ([3, 3, 1], [2, 2 / 3, 0, 8 / 9, 7 / 3, 3 / 7, 0.5, 1]),
    "single valid [nan, 7, inf]": ([NAN, 7, INF], [0, 0, 0, 0, 7, 1 / 7, 1 / EPS, 1]),
    "no valid [nan, inf, -inf]": ([NAN, INF, -INF], [0, 0, 0, 0, 0, 0, 0, 0]),
    "negative [-1, -3]": ([-1, -3, NAN], [2, 1, 2, 1, 0, 1 / EPS, 0.5, 1]),
    "zero mean [-1, 1]": ([-1, 1, NAN], [2, 1, 2, 1, 0, 1 / EPS, 0.5, 1]),
    "zero gap [2, 2, 2]": ([2, 2, 2], [0, 0, 0, 0, 2, 0.5, 1 / EPS, 1]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_builtin_metrics_match_hand_values(case):
    row, expected = CASES[case]
    for metric, value in zip(BUILT_INS, expected):
        out = informativeness([row], metric)
        assert out.dtype == torch.float32 and out.shape == (1,)
        assert out.item() == pytest.approx(value, rel=1e-6), (case, metric)


def test_metrics_are_vectorised_over_rows():
    rows = [CASES[case][0] + [NAN] * (4 - len(CASES[case][0])) for case in CASES]
    for column, metric in enumerate(BUILT_INS):
        expected = [CASES[case][1][column] for case in CASES]
        assert informativeness(rows, metric).tolist() == pytest.approx(expected, rel=1e-6)


def test_overflowing_gaps_are_clamped_to_float32_max():
    out = informativeness([[3e38, -3e38]], "A_min")
    assert out.item() == FLOAT32_MAX
    assert informativeness([[3e38, -3e38]], "var").item() == FLOAT32_MAX
    # 1e39 does not fit in float32: it becomes inf and counts as missing.
    assert informativeness(np.array([[1e39, 1.0, 2.0]]), "A_min").item() == 1.0


def test_degenerate_shapes():
    assert informativeness(torch.empty(3, 0), "A_min").tolist() == [0.0, 0.0, 0.0]
    assert informativeness(torch.empty(0, 4), "A_dis").shape == (0,)
    assert informativeness([[5.0], [NAN]], "A_dis").tolist() == [0.0, 0.0]


def test_accepts_numpy_and_int_input():
    assert informativeness(np.array([[1, 3], [2, 2]]), "A_min").tolist() == [2.0, 0.0]


def test_bad_shapes_and_names():
    with pytest.raises(ValueError, match=r"2-D .* got shape \(3,\)"):
        informativeness([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="2-D"):
        informativeness(torch.zeros(2, 2, 2))
    with pytest.raises(UnknownNameError, match="unknown metric 'A_max'; available: A_avg, A_dis"):
        informativeness([[1.0]], "A_max")


def test_user_metric_receives_masked_rewards():
    seen = {}

    @register_metric("test_spy", override=True)
    def spy(rewards, valid):
        seen["rewards"], seen["valid"] = rewards, valid
        return valid.sum(dim=1).double()

    out = informativeness([[NAN, 1.0, -2.0], [INF, NAN, 4.0]], "test_spy")
    assert seen["rewards"].dtype == torch.float64
    assert seen["rewards"].tolist() == [[-2.0, 1.0, 0.0], [4.0, 0.0, 0.0]]  # sorted, missing last as 0
    assert seen["valid"].tolist() == [[True, True, False], [True, False, False]]
    assert out.tolist() == [2.0, 1.0]


def test_user_metric_bad_outputs_raise():
    register_metric("test_wrong_shape", override=True)(lambda rewards, valid: rewards)
    register_metric("test_negative", override=True)(lambda rewards, valid: -rewards[:, 0])
    register_metric("test_nan", override=True)(lambda rewards, valid: rewards[:, 0] * NAN)
    register_metric("test_inf", override=True)(lambda rewards, valid: rewards[:, 0] * INF)
    with pytest.raises(ValueError, match=r"'test_wrong_shape' returned shape \(1, 2\), expected \(1,\)"):
        informativeness([[1.0, 2.0]], "test_wrong_shape")
    with pytest.raises(ValueError, match="'test_negative' returned NaN or negative"):
        informativeness([[1.0, 2.0]], "test_negative")
    with pytest.raises(ValueError, match="'test_nan' returned NaN or negative"):
        informativeness([[1.0, 2.0]], "test_nan")
    assert informativeness([[1.0, 2.0]], "test_inf").item() == FLOAT32_MAX


reward_values = st.one_of(
    st.floats(width=32, allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, -1.0, 0.5]),  # ties are common in real rewards
)


@st.composite
def reward_matrices(draw):
    rows = draw(st.integers(0, 5))
    cols = draw(st.integers(0, 6))
    values = draw(st.lists(reward_values, min_size=rows * cols, max_size=rows * cols))
    matrix = torch.tensor(values, dtype=torch.float32).reshape(rows, cols)
    # One random permutation of the responses per row.
    keys = draw(st.lists(st.floats(0, 1), min_size=rows * cols, max_size=rows * cols))
    order = torch.tensor(keys, dtype=torch.float64).reshape(rows, cols).argsort(dim=1, stable=True)
    return matrix, torch.gather(matrix, 1, order)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(reward_matrices())
def test_metric_properties(matrices):
    matrix, permuted = matrices
    for metric in BUILT_INS:
        out = informativeness(matrix, metric)
        assert out.shape == (matrix.shape[0],) and out.dtype == torch.float32
        assert torch.isfinite(out).all() and (out >= 0).all(), metric
        # Rows are sorted before the metric runs, so even float rounding is order-independent.
        assert torch.equal(out, informativeness(permuted, metric)), metric


def test_every_builtin_is_registered():
    assert set(BUILT_INS) <= set(METRICS.names())
    assert math.isclose(1 / EPS, 1e6)
