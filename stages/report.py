"""report: rank the grid's variants per dataset, say which neighbours the data can tell apart, BN's cost, bias
shift.

Reads only the entries in the current params.yaml grid (old files of removed entries are ignored), each file
checked first (stages/report_inputs.py). Outputs: metrics/summary.json; reports/report.md, a table a person
reads; metrics/rank/<dataset>/<rank>-<variant>.json, the ranking `dvc metrics show metrics/rank` prints;
plots/grid/<dataset>_*.png, the figures (image plots: `dvc plots diff` shows two revisions side by side);
plots/curves/<dataset>.tsv, the curves of every variant in one file for `dvc plots`. Every figure and table
states the configuration behind it, and what the run's size lets it claim: below all training images, 10
epochs or 2 seeds its order is the order of these models, not a ranking of the variants.

    python -m stages.report                              # what `dvc repro report` runs, in the project's root
    python -m stages.report docs/results/cifar10-cpu     # again from a published run's files (same layout)
"""

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from stages import figures, statistics
from stages.cli import UserError, cli
from stages.datasets import TRAIN_IMAGES
from stages.outputs import atomic_path, write_json
from stages.params import count, load
from stages.report_inputs import DatasetInputs, collect
from stages.schedules import describe
from stages.tables import ranked_table

REPORT, FIGURES, CURVES = Path("reports/report.md"), Path("plots/grid"), Path("plots/curves")
RANKING = Path("metrics/rank")  # <dataset>/<rank>-<variant>.json: `dvc metrics show metrics/rank`, a row each
ORDER = " (by mean test error, the table's order)"
ORDER_ONLY = " (these models' order by mean test error, not a ranking of the variants: see above)"
TIMING = (
    "Seconds per epoch, and so BN's cost ratio, depend on the machine and on what else ran on it meanwhile: "
    "compare them within one run on an otherwise idle machine, not across runs or machines."
)


@dataclass
class DatasetReport:
    """What the renderers of one dataset get: its checked inputs, its statistics, its configuration line."""

    inputs: DatasetInputs
    stats: statistics.Statistics
    config: str

    @property
    def name(self):
        return self.inputs.dataset


def configuration(params, d):
    """What produced the numbers, in one line: a figure or table without it cannot be compared with
    another."""
    t = params["train"]

    def values(col, fmt="{}"):  # the models' own record; several values are listed, absent ones said so
        found = sorted({fmt.format(v) for v in d[col].dropna()}) if col in d else []
        return "/".join(found) or "not recorded"

    seeds = sorted(d.seed.unique())
    return (
        f"{d.dataset.iloc[0]}, width {params['model']['width']}, {values('train_images', '{:,}')} training "
        f"images, {count(values('epochs'), 'epoch')}, batch {t['batch_size']}, {t['optimizer']} "
        f"lr {t['learning_rate']} ({describe(t['lr_schedule'], params)}), {values('precision')}, "
        f"backend {values('backend')}, "
        f"{values('test_images', '{:,}')} test images, {'seed' if len(seeds) == 1 else 'seeds'} "
        f"{', '.join(map(str, seeds))}"
    )


def all_train_images(params, rows):
    """The training images of a run that uses them all: the training split less what validation holds out."""
    held = rows.validation_images.max() if rows.validation_images.notna().any() else None
    return TRAIN_IMAGES - int(params["train"]["validation"] if held is None else held)


def claim(stats):
    """What the run's size lets it claim, in words (report.md's first paragraph, the terminal line)."""
    c = stats.claims
    if c["can_rank"]:
        return f"can rank its variants ({c['size']}: all training images, enough epochs and seeds)"
    return (
        f"cannot rank its variants ({'; '.join(c['reasons'])}): its order is the order of these models on "
        "these test images, not a finding about the variants; no neighbours are called distinguishable and "
        "the write-up is not compared"
    )


def summary_entry(rep):
    """The dataset's entry of metrics/summary.json: dicts and strings, no lists (`dvc metrics show` drops
    lists; the ranking is each variant's "rank")."""
    st, c = rep.stats, rep.inputs.curves
    last = c.sort_values("epoch").groupby("variant").tail(1).groupby("variant").act_mean.mean()
    variants = st.variants.drop(columns=["activation", "batch_norm"]).assign(act_mean_last_epoch=last)
    variants = variants.astype(object).where(variants.notna(), None)  # std of one seed: null
    return {
        "configuration": rep.config,
        "can_rank": st.claims["can_rank"],
        "cannot_rank_because": "; ".join(st.claims["reasons"]),
        "ranking_by_test_loss": " > ".join(st.by_loss),
        "variants": variants.to_dict(orient="index"),
        "neighbours": {f"{t['better']} vs {t['worse']}": t for t in st.neighbours},
        "paired_tests": {f"{t['better']} vs {t['worse']}": t for t in st.paired},
        "bn_cost": st.bn_cost,
        "write_up": st.write_up,
    }


def agreement_lines(ds, a, can_rank=True):
    """The report's paragraph on the write-up: its claims beside this run's, in a run that can rank."""
    lines = ["", "### Against the write-up", ""]
    if not can_rank:
        return lines + ["Not compared: this run cannot rank (see above)."]
    if "ranking" in a:
        r = a["ranking"]
        lines += [
            f"Write-up's ranking: {r['write_up']}. This run, over the {r['variants']} variants both have: "
            f"{r['measured']}. Kendall's τ = {r['kendall_tau']:+.2f} (p = {r['kendall_p']:.2g}; +1: the "
            f"same order, −1: reversed, 0: unrelated); {r['pairs_alike']} of {r['pairs']} pairs in the "
            f"write-up's order"
            + (f"; ordered otherwise here: {r['measured_otherwise']}." if r["measured_otherwise"] else ".")
        ]
    for v, e in a.get("test_error", {}).items():
        lines += [
            f"Write-up's test error of {v}: {e['write_up']:.2f}; this run: {e['measured']:.4f} "
            f"({statistics.LEVEL:.0%} CI {e['ci_low']:.4f}–{e['ci_high']:.4f}: the write-up's value is "
            f"{'inside' if e['inside_interval'] else 'outside'} it)."
        ]
    if len(lines) == 3:
        lines += [f"The write-up reports nothing on {ds} that this run can be compared with."]
    return lines


def neighbour_lines(s, tests, neighbours, can_rank=True):
    """Which neighbours in the ranking the data can tell apart: the test of each, and the paired tests over
    seeds. In a run that cannot rank, the p-values without a verdict."""
    per_seed = any("mcnemar_p_per_seed" in t for t in neighbours)
    lines = [
        f"Which neighbours in the ranking the data can tell apart (p < {statistics.ALPHA}):"
        if can_rank
        else "Tests of neighbours in this order (p-values of these models on these test images; this run "
        "cannot rank, so none is called distinguishable):",
        "",
        "| better | worse | test | p |"
        + (" distinguishable |" if can_rank else "")
        + (" McNemar p per seed (same test images) |" if per_seed else ""),
        "|---|---|---|---:|" + ("---|" if can_rank else "") + ("---|" if per_seed else ""),
    ]
    for t in neighbours:
        seeds = ", ".join(f"{p:.2g}" for p in t.get("mcnemar_p_per_seed", {}).values())
        if seeds and not t["mcnemar_same_way"]:
            seeds += " (not the same way on every seed)"
        lines.append(
            f"| {t['better']} | {t['worse']} | {t['test']} | {t['p']:.3g} |"
            + (f" {'yes' if t['distinguishable'] else 'no'} |" if can_rank else "")
            + (f" {seeds or '–'} |" if per_seed else "")
        )
    return lines + paired_lines(s, tests)


def paired_lines(s, tests):
    """The paired tests over seeds of neighbours in the ranking (none with one seed)."""
    if not tests:
        return []
    adjacent = set(zip(s.index, s.index[1:]))
    return [
        "",
        "Paired tests over seeds, neighbours (Wilcoxon cannot reach p < 0.05 below "
        f"{statistics.WILCOXON_SEEDS} seeds; the paired t-test assumes normal seed-to-seed differences):",
        "",
        "| better | worse | n | error difference | Wilcoxon p | paired t p |",
        "|---|---|---:|---:|---:|---:|",
    ] + [
        f"| {t['better']} | {t['worse']} | {t['n']} | {t['mean_error_difference']:+.4f} | "
        f"{t['wilcoxon_p']:.3f} | {t['paired_t_p']:.3f} |"
        for t in tests
        if (t["better"], t["worse"]) in adjacent
    ]


def bn_lines(bn_cost):
    if not bn_cost:
        return []
    return [
        "",
        "| activation | s/epoch without BN | with BN | ratio | test error change with BN |",
        "|---|---:|---:|---:|---:|",
    ] + [
        f"| {a} | {b['seconds_per_epoch_without']:.1f} | {b['seconds_per_epoch_with']:.1f} | "
        f"{b['ratio']:.2f} | {b['test_error_change']:+.4f} |"
        for a, b in bn_cost.items()
    ]


def markdown(rep, summary):
    """report.md's section of one dataset; summary: its entry of metrics/summary.json (the ranked table)."""
    st, ds, can = rep.stats, rep.name, rep.stats.claims["can_rank"]
    figures_dir = Path("..") / FIGURES  # relative to reports/, so the links work wherever the repository is
    return (
        [f"## {ds}", "", f"Configuration: {rep.config}.", ""]
        + ranked_table(summary)
        + ["", "Ranking: " + " > ".join(st.ranking) + (ORDER if can else ORDER_ONLY)]
        + ["", "By final test loss (the write-up ranked by loss as well): " + " > ".join(st.by_loss)]
        + agreement_lines(ds, st.write_up, can)
        + [""]
        + neighbour_lines(st.variants, st.paired, st.neighbours, can)
        + bn_lines(st.bn_cost)
        + ["", TIMING, ""]
        + [
            f"![{n.replace('_', ' ')}]({figures_dir}/{ds}_{n}.png)"
            for n in ("curves", "test_error", "bias_shift")
        ]
        + [""]
    )


def terminal_line(rep):
    st, tau = rep.stats, rep.stats.write_up.get("ranking", {}).get("kendall_tau")
    if not st.claims["can_rank"]:
        why = "; ".join(st.claims["reasons"])
        return (
            f"report: {rep.name}: {' > '.join(st.ranking)} (an order of these models, not a ranking: {why})"
        )
    against = "" if tau is None else f" (Kendall's tau against the write-up's order: {tau:+.2f})"
    return f"report: {rep.name}: {' > '.join(st.ranking)}{against}"


def write_ranking(folder, ds, s):
    """One small flat file per variant, so that `dvc metrics show metrics/rank` prints the ranking as a table
    a terminal holds: a row per variant in rank order (its path names dataset, rank and variant), five
    columns. No key is named `error`: DVC reports a metrics file with one as failed to load."""
    (folder / ds).mkdir()
    digits = len(str(len(s)))  # 01-... from 10 variants on: the rows sort in rank order
    for v, r in s.iterrows():
        write_json(
            folder / ds / f"{r['rank']:0{digits}d}-{v}.json",
            {
                "rank": r["rank"],
                "seeds": r.n,
                "test_error": r.test_error_mean,
                "test_error_lo": r.test_error_ci_low,
                "test_error_up": r.test_error_ci_high,
            },
        )  # mean test error and its LEVEL interval; DVC sorts the columns by name


def write_curves(path, inputs):
    """plots/curves/<dataset>.tsv: numbers, the variant's name (a checked grid name), seed and colour only."""
    c = inputs.curves.assign(
        colour=[
            figures.colour(a, bn, inputs.activations)
            for a, bn in zip(inputs.curves.activation, inputs.curves.batch_norm)
        ]
    )
    c.drop(columns=["activation", "batch_norm"]).to_csv(path, sep="\t", index=False)


def write_figures(folder, rep):
    i, config = rep.inputs, rep.config
    figures.save(
        figures.plot_curves(i.curves, i.classes, i.activations, config), folder / f"{rep.name}_curves.png"
    )
    figures.save(
        figures.plot_error_and_speed(rep.stats.variants, i.activations, config),
        folder / f"{rep.name}_test_error.png",
    )
    figures.save(
        figures.plot_bias_shift(i.curves, i.activations, config), folder / f"{rep.name}_bias_shift.png"
    )


def project_folder():
    """The folder named on the command line (default: here), checked to hold a params.yaml."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "project",
        nargs="?",
        default=".",
        help="the folder whose params.yaml, metrics/grid, results/grid, models/grid/*.json and dvclive/grid "
        "the report reads and under which it writes (default: here)",
    )
    project = ap.parse_args().project
    if not Path(project, "params.yaml").is_file():
        raise UserError(
            f"{project}: no params.yaml there; give the project's root or a published run's folder "
            f"(e.g. docs/results/cifar10-cpu)"
        )
    return project


def main():
    os.chdir(project_folder())
    params = load()
    reports = [
        DatasetReport(
            i,
            statistics.summarise(ds, i.rows, i.correct, all_train_images(params, i.rows)),
            configuration(params, i.rows),
        )
        for ds, i in collect(params["grid"]).items()
    ]  # every input read and checked before anything is written
    summary = {rep.name: summary_entry(rep) for rep in reports}
    md = ["# ALL-CNN-C: activation × batch normalisation", ""]
    md += [" ".join(f"{rep.name}: this run {claim(rep.stats)}." for rep in reports), ""]
    with (
        atomic_path(FIGURES, directory=True) as fig,
        atomic_path(CURVES, directory=True) as cur,
        atomic_path(RANKING, directory=True) as rank,
    ):
        for rep in reports:
            write_curves(cur / f"{rep.name}.tsv", rep.inputs)
            write_figures(fig, rep)
            write_ranking(rank, rep.name, rep.stats.variants)
            md += markdown(rep, summary[rep.name])
            print(terminal_line(rep))
    with atomic_path(REPORT) as tmp:
        tmp.write_text("\n".join(md), encoding="utf-8")
    write_json("metrics/summary.json", summary)


if __name__ == "__main__":
    cli(main)
