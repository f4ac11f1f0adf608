"""stages/statistics.py on hand-computed cases: intervals, McNemar, paired tests over seeds, what a run's size
can claim, the order by loss, BN's cost and agreement with the write-up. No file, no DVC: frames in, numbers
out."""

import math

import numpy as np
import pandas as pd
import pytest

from stages import statistics as st

Z = 1.959963984540054  # the standard normal's 97.5 % quantile


def rows(errors, loss=None, images=200, train_images=49_960, epochs=10, seconds=None):
    """A row per model: errors {variant: [error of seed 0, seed 1, ...]} (multiples of 1/images)."""
    out = []
    for v, per_seed in errors.items():
        for seed, e in enumerate(per_seed):
            out.append(
                {
                    "variant": v,
                    "activation": v.removesuffix("+bn"),
                    "batch_norm": v.endswith("+bn"),
                    "seed": seed,
                    "test_error": e,
                    "test_errors": round(e * images),
                    "test_images": images,
                    "test_loss": (loss or {}).get(v, 1.0),
                    "seconds_per_epoch": (seconds or {}).get(v, 10.0),
                    "train_seconds": 100.0,
                    "diverged": False,
                    "train_images": train_images,
                    "epochs": epochs,
                }
            )
    return pd.DataFrame(out)


def test_one_seed_interval_is_wilsons():
    n, k = 200, 50
    p = k / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2)) / (1 + Z**2 / n)
    assert st.error_interval([p], [k], [n]) == pytest.approx((centre - half, centre + half))


def test_several_seeds_interval_is_students_t():
    # mean 0.32, std 0.02, sem 0.02/sqrt(3); t(0.975, 2 df) = 4.302653
    low, high = st.error_interval([0.30, 0.32, 0.34], [60, 64, 68], [200] * 3)
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert (low, high) == pytest.approx((0.32 - half, 0.32 + half), abs=1e-6)


def test_seeds_with_the_same_error_give_a_zero_width_interval_not_nan():
    assert st.error_interval([0.25, 0.25], [50, 50], [200, 200]) == (0.25, 0.25)


@pytest.mark.parametrize("only_a, only_b, p", [(4, 0, 2 * 0.5**4), (3, 1, 2 * (1 + 4) / 16), (0, 0, 1.0)])
def test_mcnemar_counts_only_the_discordant_images(only_a, only_b, p):
    both = 10  # images both got right, and 7 both got wrong: they do not count
    a = np.array([True] * both + [True] * only_a + [False] * only_b + [False] * 7)
    b = np.array([True] * both + [False] * only_a + [True] * only_b + [False] * 7)
    t = st.mcnemar_exact(a, b)
    assert (t["only_better_right"], t["only_worse_right"]) == (only_a, only_b)
    assert t["p"] == pytest.approx(p)


def test_paired_tests_over_three_seeds():
    # differences a - b: -0.01, -0.02, -0.03: mean -0.02, std 0.01, t = -0.02 / (0.01 / sqrt 3) = -3.4641 on
    # 2 df, whose two-sided p is 1 - t / sqrt(t^2 + 2) = 1 - 3.4641 / sqrt 14; Wilcoxon, 3 of one sign: 2/8
    df = rows({"a": [0.30, 0.31, 0.32], "b": [0.31, 0.33, 0.35]})
    (t,) = st.paired_tests(df, ["a", "b"])
    assert (t["better"], t["worse"], t["n"]) == ("a", "b", 3)
    assert t["mean_error_difference"] == pytest.approx(-0.02)
    assert t["paired_t_p"] == pytest.approx(1 - math.sqrt(12) / math.sqrt(14), rel=1e-6)
    assert t["wilcoxon_p"] == pytest.approx(0.25)
    assert st.paired_tests(rows({"a": [0.3], "b": [0.4]}), ["a", "b"]) == []  # one seed: nothing to pair


def test_a_run_ranks_only_with_all_images_ten_epochs_and_two_seeds():
    two = {"a": [0.3, 0.31], "b": [0.4, 0.41]}
    assert st.claims(rows(two), 49_960) == {
        "can_rank": True,
        "reasons": [],
        "size": "49,960 training images, 10 epochs, 2 seeds per variant",
    }
    assert st.claims(rows({"a": [0.3], "b": [0.4]}, train_images=8_000, epochs=4), 45_000)["reasons"] == [
        "8,000 of 45,000 training images",
        "4 epochs of the 10 a ranking needs",
        "one seed of the 2 a ranking needs",
    ]
    assert st.claims(rows(two, epochs=9), 49_960)["reasons"] == ["9 epochs of the 10 a ranking needs"]


def test_below_the_size_that_ranks_no_neighbours_are_called_distinguishable():
    df = rows({"a": [0.1], "b": [0.9]}, train_images=1000, epochs=3)
    right = {("a", 0): np.arange(200) >= 20, ("b", 0): np.arange(200) >= 180}  # 160 images only a got right
    s = st.summarise("cifar10", df, right, 49_960)
    (t,) = s.neighbours
    assert t["p"] < 1e-40 and t["distinguishable"] is None
    assert s.write_up == {} and s.claims["can_rank"] is False
    ranked = st.summarise("cifar10", rows({"a": [0.1, 0.1], "b": [0.9, 0.9]}), {}, 49_960)
    assert ranked.neighbours[0]["distinguishable"] is False  # p = 1: equal differences give t no spread
    assert ranked.claims["can_rank"] is True


def test_variants_are_ranked_by_error_and_by_loss():
    df = rows({"a": [0.30, 0.32], "b": [0.35, 0.37], "c": [0.40, 0.40]}, loss={"a": 1.2, "b": 0.9, "c": 1.5})
    s = st.summarise("cifar10", df, {}, 49_960)
    assert s.ranking == ["a", "b", "c"] and s.by_loss == ["b", "a", "c"]
    assert list(s.variants.loss_rank) == [2, 1, 3] and list(s.variants["rank"]) == [1, 2, 3]
    assert list(s.variants.n) == [2, 2, 2] and s.variants.test_error_mean["a"] == pytest.approx(0.31)


def test_bn_cost_is_the_ratio_of_seconds_per_epoch():
    df = rows({"relu": [0.4], "relu+bn": [0.3], "elu": [0.35]}, seconds={"relu": 20.0, "relu+bn": 30.0})
    assert st.bn_cost(st.by_variant(df)) == {
        "relu": {
            "seconds_per_epoch_without": 20.0,
            "seconds_per_epoch_with": 30.0,
            "ratio": 1.5,
            "test_error_change": pytest.approx(-0.1),
        }
    }


def test_agreement_with_the_write_ups_ranking():
    # write-up: relu+bn > elu > prelu > elu+bn > relu; here over four of them: relu+bn > elu+bn > elu > relu
    # pairs: 6, one reversed (elu+bn ahead of elu): Kendall's tau = (5 - 1) / 6
    df = rows({"relu+bn": [0.30], "elu+bn": [0.32], "elu": [0.34], "relu": [0.50], "selu": [0.2]})
    a = st.agreement("cifar10", st.by_variant(df))["ranking"]
    assert a["measured"] == "relu+bn > elu+bn > elu > relu" and a["variants"] == 4
    assert (a["pairs"], a["pairs_alike"], a["measured_otherwise"]) == (6, 5, "elu+bn > elu")
    assert a["kendall_tau"] == pytest.approx(4 / 6)


def test_cifar100_is_held_against_the_write_ups_error():
    s = pd.DataFrame(
        {"rank": [1], "test_error_mean": [0.40], "test_error_ci_low": [0.35], "test_error_ci_high": [0.45]},
        index=["relu+bn"],
    )
    agree = st.agreement("cifar100", s)
    assert "ranking" not in agree
    assert agree["test_error"]["relu+bn"] == {
        "write_up": 0.36,
        "measured": 0.40,
        "ci_low": 0.35,
        "ci_high": 0.45,
        "inside_interval": True,
    }
