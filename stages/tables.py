"""The ranked table of a study, rendered from one dataset's summary (metrics/summary.json's <dataset> entry,
the report's published output): the one renderer of report.md's table, the README's (scripts/results_table.py)
and the GPU study's. Pure text from dicts: no file, no figure.

    from stages.tables import ranked_table, README
    print("\n".join(ranked_table(json.load(open("metrics/summary.json"))["cifar10"], README, compact=True)))
"""

LEVEL_PERCENT = 95  # stages.statistics.LEVEL as the headers write it


def _seeds(ns):
    return "/".join(map(str, ns))


def _error_header(ns):
    return "test error" if ns == [1] else f"test error, mean ± std over {_seeds(ns)} seeds"


def _interval_header(ns):
    how = "t over seeds" if 1 not in ns else "Wilson, test images" if ns == [1] else "Wilson or t"
    return f"{LEVEL_PERCENT} % interval ({how})"


def _error(v, d):
    std = v.get("test_error_std")
    return f"{v['test_error_mean']:.{d}f}" + (f" ± {std:.{d}f}" if std is not None and v["n"] > 1 else "")


def _interval(v, d):
    return f"{v['test_error_ci_low']:.{d}f}–{v['test_error_ci_high']:.{d}f}"


def _apart(t):
    """The neighbour test of a variant against the next one: yes/no only in a run that can rank."""
    if t is None:
        return ""
    said = {True: "yes, ", False: "no, "}.get(t.get("distinguishable"), "")
    return f"{said}p = {t['p']:.2g} ({t['test']})"


def _number(x, fmt):
    return "–" if x is None else format(x, fmt)


# name: (header from the seeds per variant, markdown alignment, cell from (variant's dict, its neighbour test,
# error digits, seconds digits))
COLUMNS = {
    "rank": (lambda ns: "rank", "---:", lambda v, t, d, sd: str(v["rank"])),
    "variant": (lambda ns: "variant", "---", lambda v, t, d, sd: v["name"]),
    "error": (_error_header, "---", lambda v, t, d, sd: _error(v, d)),
    "interval": (_interval_header, "---", lambda v, t, d, sd: _interval(v, d)),
    "apart": (lambda ns: "told apart from the next?", "---", lambda v, t, d, sd: _apart(t)),
    "n": (lambda ns: "n", "---:", lambda v, t, d, sd: str(v["n"])),
    "loss": (lambda ns: "test loss", "---:", lambda v, t, d, sd: _number(v.get("test_loss_mean"), ".3f")),
    "loss_rank": (lambda ns: "rank by loss", "---:", lambda v, t, d, sd: _number(v.get("loss_rank"), "d")),
    "seconds": (lambda ns: "s/epoch", "---:", lambda v, t, d, sd: _number(v["seconds_per_epoch"], f".{sd}f")),
    "act_mean": (
        lambda ns: "mean activation, last epoch",
        "---:",
        lambda v, t, d, sd: _number(v.get("act_mean_last_epoch"), "+.3f"),
    ),
    "diverged": (lambda ns: "diverged", "---:", lambda v, t, d, sd: str(v["diverged"])),
}
REPORT = ("rank", "variant", "error", "interval", "n", "loss", "loss_rank", "seconds", "act_mean", "diverged")
README = ("rank", "variant", "error", "interval", "apart", "seconds")


def ranked_table(summary, columns=REPORT, compact=False):
    """Markdown lines of the variants of summary (a dataset's entry of metrics/summary.json) in rank order,
    one column per name in columns (COLUMNS); compact: errors to 3 decimals and whole seconds (else 4 and
    1)."""
    variants = sorted(({**v, "name": k} for k, v in summary["variants"].items()), key=lambda v: v["rank"])
    below = {t["better"]: t for t in summary.get("neighbours", {}).values()}
    ns = sorted({v["n"] for v in variants})
    d, sd = (3, 0) if compact else (4, 1)
    cols = [COLUMNS[c] for c in columns]
    return [
        "| " + " | ".join(head(ns) for head, _, _ in cols) + " |",
        "|" + "|".join(align for _, align, _ in cols) + "|",
    ] + [
        "| " + " | ".join(cell(v, below.get(v["name"]), d, sd) for _, _, cell in cols) + " |"
        for v in variants
    ]
