"""The report's statistics, pure: from one dataset's rows (one per trained model) to its ranking, intervals,
tests of neighbours, BN's cost, agreement with the write-up and what the run's size lets it claim.

No file, figure or text here (stages/report.py reads and writes, stages/figures.py draws, stages/tables.py
renders): every function takes frames and arrays and returns numbers, so tests check it on hand-computed
cases.
"""

import itertools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05  # neighbours whose test gives p < ALPHA are called distinguishable (in a run that can rank)
LEVEL = 0.95  # confidence level of the error intervals
WILCOXON_SEEDS = 6  # below 6 seeds Wilcoxon's signed-rank test cannot reach p < 0.05 (n = 5: p >= 0.0625)
RANKING_EPOCHS = 10  # below this many epochs the models are still far from trained: an order, not a ranking
RANKING_SEEDS = 2  # one seed: no spread over seeds, so nothing says the order would hold for another seed
# What the write-up this project follows reported: its CIFAR-10 ranking (best first) and its CIFAR-100 (fine
# labels) test error for relu+bn after ~50k steps. Every report that can rank says how far its run agrees.
WRITE_UP = {
    "cifar10": {"ranking": ["relu+bn", "elu", "prelu", "elu+bn", "relu"]},
    "cifar100": {"test_error": {"relu+bn": 0.36}},
}


@dataclass
class Statistics:
    """One dataset's statistics. variants: a row per variant in rank order (index: variant name); paired:
    paired tests over seeds of every pair; neighbours: the test of each variant against the next one."""

    variants: pd.DataFrame
    paired: list = field(default_factory=list)
    neighbours: list = field(default_factory=list)
    bn_cost: dict = field(default_factory=dict)
    write_up: dict = field(default_factory=dict)
    claims: dict = field(default_factory=dict)

    @property
    def ranking(self):
        return list(self.variants.index)

    @property
    def by_loss(self):
        """The variants ordered by final test loss (the write-up ranked by loss as well as by accuracy)."""
        return list(self.variants.sort_values(["test_loss_mean", "rank"]).index)


def error_interval(test_error, test_errors, test_images):
    """LEVEL confidence interval (low, high) of a variant's test error from its seeds' errors (fractions):
    one seed, binomial (Wilson) over its test_errors of test_images; several, Student's t over the seeds."""
    if len(test_error) == 1:
        ci = stats.binomtest(int(test_errors[0]), int(test_images[0])).proportion_ci(LEVEL, "wilson")
        return float(ci.low), float(ci.high)
    e = np.asarray(test_error, float)
    if np.std(e) == 0:  # every seed the same error: a zero-width interval (scipy would give NaN)
        return float(e[0]), float(e[0])
    low, high = stats.t.interval(LEVEL, len(e) - 1, loc=e.mean(), scale=stats.sem(e))
    return float(low), float(high)


def paired_tests(df, ranking):
    """Pairs of variants (a ahead of b in ranking) compared seed by seed on test error (needs >= 2 seeds)."""
    errors = df.pivot_table(index="seed", columns="variant", values="test_error")
    out = []
    for a, b in itertools.combinations(ranking, 2) if len(errors) >= 2 else ():
        d = (errors[a] - errors[b]).dropna()
        if len(d) < 2:
            continue
        out.append(
            {
                "better": a,
                "worse": b,
                "n": int(len(d)),
                "mean_error_difference": float(d.mean()),
                "wilcoxon_p": float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0,
                "paired_t_p": float(stats.ttest_rel(errors[a], errors[b]).pvalue) if np.std(d) > 0 else 1.0,
            }
        )
    return out


def mcnemar_exact(right_a, right_b):
    """McNemar's exact test: of the test images exactly one of the two models got right, is the split
    50:50?"""
    only_a, only_b = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    p = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {
        "test": "McNemar exact (same test images)",
        "only_better_right": only_a,
        "only_worse_right": only_b,
        "p": float(p),
    }


def per_seed_mcnemar(right_a, right_b):
    """McNemar's p of a against b on each seed both have per-image results for ({seed: p}; right_*: {seed:
    bool array}), and whether a got more of the discordant test images right on every one of them."""
    tests = {s: mcnemar_exact(right_a[s], right_b[s]) for s in sorted(set(right_a) & set(right_b))}
    same_way = bool(tests) and all(t["only_better_right"] > t["only_worse_right"] for t in tests.values())
    return {s: t["p"] for s, t in tests.items()}, same_way


def over_seeds(pair, right_a, right_b):
    """A neighbour test over seeds: Wilcoxon from WILCOXON_SEEDS seeds on, Student's paired t below (where
    Wilcoxon cannot reject), with McNemar's test on the same test images per seed beside it."""
    wilcoxon = pair["n"] >= WILCOXON_SEEDS
    out = {
        "test": f"{'Wilcoxon signed-rank' if wilcoxon else 'paired t'} over {pair['n']} seeds",
        "p": pair["wilcoxon_p" if wilcoxon else "paired_t_p"],
    }
    mcnemar, same_way = per_seed_mcnemar(right_a, right_b)
    if mcnemar:
        out.update(
            mcnemar_p_per_seed={str(k): v for k, v in mcnemar.items()},
            mcnemar_same_way=same_way,
            mcnemar_all_below_alpha=same_way and max(mcnemar.values()) < ALPHA,
        )
    return out


def one_seed(ra, rb, right_a, right_b):
    """A neighbour test on one seed (rows ra, rb): McNemar on the same test images, or, without per-image
    results, Fisher's exact test on the error counts (unpaired, so weaker)."""
    if ra.seed in right_a and rb.seed in right_b:
        return mcnemar_exact(right_a[ra.seed], right_b[rb.seed])
    table = [
        [ra.test_errors, ra.test_images - ra.test_errors],
        [rb.test_errors, rb.test_images - rb.test_errors],
    ]
    return {
        "test": "Fisher exact on error counts (no per-image predictions)",
        "p": float(stats.fisher_exact(table).pvalue),
    }


def neighbour_test(df, a, b, paired, correct, can_rank=True):
    """Can the data tell variant a from b, its successor in the ranking? correct: {(variant, seed): bool array
    of the test images that model got right}. In a run below the size that ranks, `distinguishable` is None:
    the p-value describes these models on these images, not the variants."""
    right_a, right_b = ({s: r for (v, s), r in correct.items() if v == x} for x in (a, b))
    pair = next((t for t in paired if (t["better"], t["worse"]) == (a, b)), None)
    if pair:
        out = over_seeds(pair, right_a, right_b)
    else:
        out = one_seed(*(df[df.variant == v].iloc[0] for v in (a, b)), right_a, right_b)
    return {"better": a, "worse": b, **out, "distinguishable": bool(out["p"] < ALPHA) if can_rank else None}


def by_variant(df):
    """A row per variant (index: variant name) in rank order (lowest mean test error first), with its rank,
    LEVEL interval and rank by mean test loss. std: NaN for one seed."""
    g = df.groupby("variant")
    s = pd.DataFrame(
        {
            "n": g.size(),
            "test_error_mean": g.test_error.mean(),
            "test_error_std": g.test_error.std(ddof=1),
            "test_loss_mean": g.test_loss.mean(),
            "seconds_per_epoch": g.seconds_per_epoch.mean(),
            "train_seconds": g.train_seconds.mean(),
            "diverged": g.diverged.sum().astype(int),
            "test_images": g.test_images.first(),
            "activation": g.activation.first(),
            "batch_norm": g.batch_norm.first(),
        }
    )
    ci = {v: error_interval(x.test_error.values, x.test_errors.values, x.test_images.values) for v, x in g}
    s["test_error_ci_low"] = [ci[v][0] for v in s.index]
    s["test_error_ci_high"] = [ci[v][1] for v in s.index]
    s = s.sort_values(["test_error_mean", "test_loss_mean"], kind="stable")
    s.insert(0, "rank", range(1, len(s) + 1))
    s["loss_rank"] = s.test_loss_mean.rank(method="first").astype(int)
    return s


def bn_cost(s):
    """{activation: seconds per epoch without and with BN, their ratio, the change of test error} for every
    activation the grid has both ways."""
    out = {}
    for act, pair in s.groupby("activation"):
        if set(pair.batch_norm) == {False, True}:
            off, on = (pair[pair.batch_norm == v].iloc[0] for v in (False, True))
            out[act] = {
                "seconds_per_epoch_without": off.seconds_per_epoch,
                "seconds_per_epoch_with": on.seconds_per_epoch,
                "ratio": on.seconds_per_epoch / off.seconds_per_epoch,
                "test_error_change": on.test_error_mean - off.test_error_mean,
            }
    return out


def claims(df, all_train_images):
    """What this run's size lets it claim: {"can_rank": bool, "reasons": [...], "size": its size in words}. It
    ranks only with every training image (all_train_images: the split less validation), RANKING_EPOCHS epochs
    and RANKING_SEEDS seeds per variant; below that its order is the order of these models, not a finding
    about the variants."""
    reasons = []
    images, epochs = int(df.train_images.min()), int(df.epochs.min())
    seeds = int(df.groupby("variant").size().min())
    if images < all_train_images:
        reasons.append(f"{images:,} of {all_train_images:,} training images")
    if epochs < RANKING_EPOCHS:
        reasons.append(f"{epochs} epoch{'s' * (epochs != 1)} of the {RANKING_EPOCHS} a ranking needs")
    if seeds < RANKING_SEEDS:
        reasons.append(f"one seed of the {RANKING_SEEDS} a ranking needs")
    size = f"{images:,} training images, {epochs} epochs, {seeds} seeds per variant"
    return {"can_rank": not reasons, "reasons": reasons, "size": size}


def agreement(ds, s):
    """Does this run reproduce the write-up? Kendall's tau between its ranking and this run's over the
    variants both have (1: the same order, -1: reversed, ~0: unrelated), the pairs ordered alike, and the
    write-up's test errors beside this run's intervals. Dicts and strings only, so `dvc metrics show` keeps
    them."""
    ref, out = WRITE_UP.get(ds, {}), {}
    common = [v for v in ref.get("ranking", []) if v in s.index]
    if len(common) >= 2:
        tau = stats.kendalltau(range(len(common)), [s.loc[v, "rank"] for v in common])
        pairs = list(itertools.combinations(common, 2))  # (a, b): the write-up has a ahead of b
        other = [f"{b} > {a}" for a, b in pairs if s.loc[a, "rank"] > s.loc[b, "rank"]]
        out["ranking"] = {
            "write_up": " > ".join(ref["ranking"]),
            "variants": len(common),
            "measured": " > ".join(sorted(common, key=lambda v: s.loc[v, "rank"])),
            "kendall_tau": float(tau.statistic),
            "kendall_p": float(tau.pvalue),
            "pairs": len(pairs),
            "pairs_alike": len(pairs) - len(other),
            "measured_otherwise": ", ".join(other),
        }
    for v, error in ref.get("test_error", {}).items():
        if v in s.index:
            r = s.loc[v]
            out.setdefault("test_error", {})[v] = {
                "write_up": error,
                "measured": float(r.test_error_mean),
                "ci_low": float(r.test_error_ci_low),
                "ci_high": float(r.test_error_ci_high),
                "inside_interval": bool(r.test_error_ci_low <= error <= r.test_error_ci_high),
            }
    return out


def summarise(ds, df, correct, all_train_images):
    """Statistics of dataset ds from df (a row per model: variant, activation, batch_norm, seed, epochs,
    train_images, test_error, test_errors, test_images, test_loss, seconds_per_epoch, train_seconds, diverged)
    and correct ({(variant, seed): bool array over the test images})."""
    s = by_variant(df)
    said = claims(df, all_train_images)
    paired = paired_tests(df, list(s.index))
    neighbours = [
        neighbour_test(df, a, b, paired, correct, said["can_rank"]) for a, b in zip(s.index, s.index[1:])
    ]
    agree = agreement(ds, s) if said["can_rank"] else {}
    return Statistics(s, paired, neighbours, bn_cost(s), agree, said)
