"""The report: ``report.md`` and its PNG plots, built from the run's Parquet tables only, so
``aqgan-ray report`` can rebuild it at any time, and ``compare`` across runs.

Plots (matplotlib, Agg): accuracy reached against the budget per hardware model and method (mean
and spread over seeds); search cost per design point per method (log scale; marginal and
amortized for the methods with a one-time cost: AQGAN, its ablations and the ILP); AQGAN's target
against achieved accuracy; anytime curves (best within budget against evaluations, median and
range over seeds) where the searching baselines ran, with AQGAN's marginal and amortized cost as
points; and the evaluations each searching baseline needed to match AQGAN.

Columns added to ``search_cost.parquet`` later (``evaluations_to_match_0_5``,
``eval_cpu_s_to_match``, ``break_even_points``) are shown where present: older tables still build.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from aqgan_ray.atomic import read_json, write_atomic, write_text  # noqa: E402
from aqgan_ray.errors import UserError  # noqa: E402
from aqgan_ray.experiment.ledger import NEAR  # noqa: E402
from aqgan_ray.store import read_frame  # noqa: E402
from baselines import BASELINES, METHODS  # noqa: E402

METHOD_ORDER = tuple(METHODS)
COLORS = {name: method.color for name, method in METHODS.items()}
SEARCHING = tuple(name for name, method in METHODS.items() if method.searching)
# What ``evaluations_to_match_0_5`` allows: AQGAN's selected accuracy less half a point.
MATCH_TOLERANCE = NEAR


def load_tables(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None, dict]:
    cost_path = run_dir / "search_cost.parquet"
    if not cost_path.is_file():
        raise UserError(
            f"{run_dir} holds no search_cost.parquet; run `aqgan-ray run` for this experiment "
            "first (or point --results at the directory that holds it)"
        )
    summary_path = run_dir / "run.json"
    summary = read_json(summary_path) if summary_path.is_file() else {}
    fidelity_path = run_dir / "fidelity.parquet"
    fidelity = read_frame(fidelity_path) if fidelity_path.is_file() else None
    return read_frame(cost_path), read_frame(run_dir / "traces.parquet"), fidelity, summary


def _point_key(cost: pd.DataFrame) -> pd.Series:
    return cost["hw"] + " " + cost["metric"] + " " + cost.apply(_budget_text, axis=1)


def shared(cost: pd.DataFrame, methods: list[str] | None = None) -> pd.DataFrame:
    """The rows of ``methods`` (default: all) at the design points every one of them ran on,
    in every seed: the only points on which their figures compare like with like."""
    if methods is not None:
        cost = cost[cost["method"].isin(methods)]
    cost = cost.assign(point=_point_key(cost))
    runs = cost.groupby("point")[["method", "seed"]].apply(
        lambda f: set(zip(f["method"], f["seed"], strict=True))
    )
    wanted = {(m, seed) for m in cost["method"].unique() for seed in cost["seed"].unique()}
    keep = [point for point, ran in runs.items() if ran >= wanted]
    return cost[cost["point"].isin(keep)]


def summary_table(cost: pd.DataFrame, chance: float | None = None) -> pd.DataFrame:
    """One row per method over the design points every method in ``cost`` ran on (``shared``):
    search cost, accuracy reached, and the difference from AQGAN, as the mean over seeds with
    its standard deviation. A point where a method found nothing within budget counts at
    ``chance`` accuracy (left out when ``chance`` is None). A difference from AQGAN is marked
    only when it is larger than its spread over seeds (one seed: never)."""
    rows = shared(cost)
    if chance is not None:
        rows = rows.assign(
            val_acc=rows["val_acc"].fillna(chance), test_acc=rows["test_acc"].fillna(chance)
        )
    per_seed = rows.groupby(["method", "seed"], sort=False).agg(
        points=("point", "nunique"),
        evaluations=("evaluations", "mean"),
        amortized=("amortized_evaluations", "mean"),
        eval_cpu_s=("eval_cpu_s", "mean"),
        val_acc=("val_acc", "mean"),
        test_acc=("test_acc", "mean"),
        found=("within_budget", "mean"),
    )
    grouped = per_seed.groupby(level="method", sort=False)
    table = pd.DataFrame(
        {
            "points": grouped["points"].first(),
            "seeds": grouped.size(),
            "evaluations / point": grouped["evaluations"].mean(),
            "amortized / point": grouped["amortized"].mean(),
            "eval CPU s / point": grouped["eval_cpu_s"].mean(),
            "found within budget": grouped["found"].mean(),
            "mean val acc": grouped["val_acc"].mean(),
            "mean test acc": grouped["test_acc"].mean(),
            "test acc std": grouped["test_acc"].std(ddof=1),
        }
    )
    if "aqgan" in table.index:
        base = per_seed.xs("aqgan", level="method")["test_acc"]
        diffs = {
            method: (sub.droplevel("method")["test_acc"] - base).dropna()
            for method, sub in per_seed.groupby(level="method", sort=False)
        }
        table["vs aqgan"] = [diffs[m].mean() for m in table.index]
        table["vs aqgan std"] = [diffs[m].std(ddof=1) for m in table.index]
        table["beyond spread"] = [
            m != "aqgan" and len(diffs[m]) > 1 and abs(diffs[m].mean()) > diffs[m].std(ddof=1)
            for m in table.index
        ]
    order = [m for m in METHOD_ORDER if m in table.index]
    return table.loc[order]


def readable_summary(table: pd.DataFrame) -> pd.DataFrame:
    """``summary_table`` for reading: mean ± std, differences marked when beyond the spread."""
    out = table.drop(
        columns=[c for c in table.columns if c.endswith(" std") or c == "beyond spread"]
    )
    out["mean test acc"] = [
        _pm(m, s) for m, s in zip(table["mean test acc"], table["test acc std"], strict=True)
    ]
    if "vs aqgan" in table.columns:
        out["vs aqgan"] = [
            "" if method == "aqgan" else _pm(m, s, signed=True) + (" *" if beyond else "")
            for method, m, s, beyond in zip(
                table.index,
                table["vs aqgan"],
                table["vs aqgan std"],
                table["beyond spread"],
                strict=True,
            )
        ]
    return out


def _pm(mean: float, std: float, signed: bool = False) -> str:
    if pd.isna(mean):
        return ""
    text = f"{mean:+.4f}" if signed else f"{mean:.4f}"
    return text if pd.isna(std) else f"{text} ± {std:.4f}"


def point_table(cost: pd.DataFrame) -> pd.DataFrame:
    """Per design point: each method's evaluations side by side (means over seeds); the
    accuracies, with their spread, are ``accuracy_table``'s."""
    cost = cost.assign(point=_point_key(cost))
    evaluations = cost.pivot_table(
        index="point", columns="method", values="evaluations", dropna=False
    )
    aqgan = cost[cost["method"] == "aqgan"]
    amortized = aqgan.groupby("point")["amortized_evaluations"].mean()
    out = pd.DataFrame(index=evaluations.index)
    for method in [m for m in METHOD_ORDER if m in evaluations.columns]:
        out[f"{method} evals"] = evaluations[method]
        if method == "aqgan":
            out["aqgan amortized"] = amortized
    return out


def accuracy_table(cost: pd.DataFrame) -> pd.DataFrame:
    """Per design point and method: validation accuracy (what the search chose on) and test
    accuracy of the choice, mean ± std over the seeds that found one within budget."""
    known = cost[cost["method"].isin(METHOD_ORDER)]
    known = known.assign(point=_point_key(known), order=known["method"].map(METHOD_ORDER.index))
    stats = (
        known.groupby(["hw", "metric", "budget", "order", "point", "method"])
        .agg(
            found=("val_acc", "count"),
            seeds=("seed", "nunique"),
            val=("val_acc", "mean"),
            val_std=("val_acc", "std"),
            test=("test_acc", "mean"),
            test_std=("test_acc", "std"),
        )
        .reset_index()
    )
    return pd.DataFrame(
        {
            "method": stats["method"].to_numpy(),
            "found within budget": [
                f"{f}/{n}" for f, n in zip(stats["found"], stats["seeds"], strict=True)
            ],
            "val acc": [_pm(m, s) for m, s in zip(stats["val"], stats["val_std"], strict=True)],
            "test acc": [_pm(m, s) for m, s in zip(stats["test"], stats["test_std"], strict=True)],
        },
        index=stats["point"].to_numpy(),
    )


def match_rows(cost: pd.DataFrame) -> pd.DataFrame:
    """The rows of the methods matched against AQGAN (every one without a one-time cost), in
    design-point order, with ``aqgan_val_acc`` (AQGAN's choice at the same point and seed; NaN:
    nothing to match) and ``to_match``: evaluations to match, or, where the search never
    matched, the evaluations it spent (a lower bound, ``matched`` False)."""
    key = ["hw", "metric", "budget", "seed"]
    aqgan = cost.loc[cost["method"] == "aqgan", [*key, "val_acc"]].drop_duplicates(key)
    rows = cost[cost["method"].isin(BASELINES)].merge(
        aqgan.rename(columns={"val_acc": "aqgan_val_acc"}), on=key, how="left"
    )
    matched = rows["evaluations_to_match"].notna()
    rows = rows.assign(
        matched=matched,
        to_match=rows["evaluations_to_match"].where(matched, rows["evaluations"]),
        order=rows["method"].map(METHOD_ORDER.index),
    )
    return rows.sort_values(["hw", "metric", "budget", "order", "seed"], kind="stable")


def match_table(cost: pd.DataFrame) -> pd.DataFrame | None:
    """``match_rows`` for reading: "> N" where a search never matched (N: what it spent), a
    break-even from such a lower bound "<= k", "never" where AQGAN never breaks even, and
    blank where AQGAN chose nothing to match; None where no baseline ran."""
    rows = match_rows(cost)
    if not len(rows):
        return None
    target = rows["aqgan_val_acc"]
    out = pd.DataFrame(
        {"method": rows["method"].to_numpy(), "seed": rows["seed"].to_numpy(),
         "aqgan val acc": target.to_numpy(), "evaluations": rows["evaluations"].to_numpy()},
        index=_point_key(rows).to_numpy(),
    )  # fmt: skip
    spent = {"evaluations_to_match": "evaluations", "evaluations_to_match_0_5": "evaluations",
             "eval_cpu_s_to_match": "eval_cpu_s"}  # fmt: skip
    searching = rows["method"].isin(SEARCHING)
    for column, bound in spent.items():
        if column in rows:
            out[column] = [
                _at_least(value, limit, aim, more)
                for value, limit, aim, more in zip(
                    rows[column], rows[bound], target, searching, strict=True
                )
            ]
    for column in ("break_even_points", "break_even_points_s"):
        if column in rows:
            out[column] = [
                _break_even(points, matched)
                for points, matched in zip(rows[column], rows["matched"], strict=True)
            ]
    return out


def _at_least(value: float, spent: float, target: float, searching: bool = True) -> str:
    """A lower bound ("> N") only for a search that could have gone on; uniform and the ILP
    stop on their own ("not reached")."""
    if pd.isna(target):
        return ""
    if pd.isna(value):
        return f"> {spent:.4g}" if searching else "not reached"
    return f"{value:.4g}"


def _break_even(points: float, matched: bool) -> str:
    if pd.isna(points):
        return ""
    if math.isinf(points):
        return "never"
    return f"{points:.3g}" if matched else f"<= {points:.3g}"


def tuning_table(cost: pd.DataFrame) -> pd.DataFrame | None:
    """AQGAN against uniform and store-best at every point the three ran on (means over
    seeds), and the ILP's choice beside them where it ran there too; None where one of the
    three did not run."""
    wanted = ["aqgan", "uniform", "store"]
    sub = shared(cost, wanted)
    if set(sub["method"]) != set(wanted):
        return None
    with_ilp = shared(cost, [*wanted, "ilp"])
    if "ilp" in set(with_ilp["method"]) and set(with_ilp["point"]) == set(sub["point"]):
        sub, wanted = with_ilp, [*wanted, "ilp"]
    val = sub.pivot_table(index="point", columns="method", values="val_acc", dropna=False)
    test = sub.pivot_table(index="point", columns="method", values="test_acc", dropna=False)
    aqgan = sub[sub["method"] == "aqgan"].groupby("point")
    out = pd.DataFrame(index=val.index)
    for method in wanted:
        out[f"{method} val"] = val[method]
    out["aqgan margin"] = 100 * (val["aqgan"] - val[["uniform", "store"]].max(axis=1))
    if "ilp" in wanted:
        out["aqgan - ilp"] = 100 * (val["aqgan"] - val["ilp"])
    for method in wanted:
        out[f"{method} test"] = test[method]
    out["aqgan evals"] = aqgan["evaluations"].mean()
    if "origin" in sub:
        out["aqgan origin"] = aqgan["origin"].agg(lambda o: ", ".join(sorted(set(o.dropna()))))
    return out


def _budget_text(row: pd.Series) -> str:
    if row["budget_fraction"] is not None and not pd.isna(row["budget_fraction"]):
        return f"{row['budget_fraction']:g}x"
    return f"{row['budget']:.4g}"


def plot_accuracy_vs_budget(cost: pd.DataFrame, path: Path) -> Path:
    """Test accuracy against the budget per hardware model: the mean over seeds, with error bars
    of their standard deviation (none with one seed)."""
    hws = list(dict.fromkeys(cost["hw"]))
    fig, axes = plt.subplots(1, len(hws), figsize=(4.2 * len(hws), 3.6), squeeze=False)
    for ax, hw in zip(axes[0], hws, strict=True):
        sub = cost[cost["hw"] == hw]
        x_col = "budget_fraction" if sub["budget_fraction"].notna().all() else "budget"
        for method in [m for m in METHOD_ORDER if m in set(sub["method"])]:
            rows = sub[sub["method"] == method].groupby(x_col)["test_acc"]
            mean, std = rows.mean().sort_index(), rows.std().sort_index().fillna(0.0)
            ax.errorbar(mean.index, mean.values, yerr=std.values, fmt="o-", capsize=3,
                        color=COLORS[method], label=method)  # fmt: skip
        ax.set_title(f"{hw} ({sub['metric'].iloc[0]})")
        ax.set_xlabel("budget (fraction of all-8-bit)" if x_col == "budget_fraction" else "budget")
        ax.set_ylabel("test accuracy (mean ± std over seeds)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(*_legend_entries(axes[0]), fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _legend_entries(axes) -> tuple[list, list[str]]:
    """Every label drawn on ``axes`` once, in the order first drawn."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    return list(handles.values()), list(handles)


def plot_search_cost(cost: pd.DataFrame, path: Path) -> Path:
    summary = summary_table(cost)
    labels, values, colors = [], [], []
    for method, row in summary.iterrows():
        labels.append(method)
        values.append(row["evaluations / point"])
        colors.append(COLORS[method])
        if METHODS[method].shares:  # a one-time cost shared by the points: its share too
            labels.append(f"{method}\namortized")
            values.append(row["amortized / point"])
            colors.append("plum" if METHODS[method].shares == "ilp" else "salmon")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar(labels, values, color=colors)
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.8)
    ax.set_ylabel("evaluations per design point")
    ax.set_title("search cost per design point")
    for i, value in enumerate(values):
        ax.text(i, value, f"{value:.3g}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_fidelity(fidelity: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.scatter(fidelity["target_acc"], fidelity["achieved_val_acc"], color=COLORS["aqgan"], s=18,
               label="validation")  # fmt: skip
    if "achieved_test_acc" in fidelity:
        ax.scatter(fidelity["target_acc"], fidelity["achieved_test_acc"], color="black",
                   marker="x", s=18, label="test (after the choice)")  # fmt: skip
    lo = float(min(fidelity["target_acc"].min(), fidelity["achieved_val_acc"].min()))
    hi = float(max(fidelity["target_acc"].max(), fidelity["achieved_val_acc"].max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="achieved = target")
    ax.set_xlabel("target accuracy")
    ax.set_ylabel("achieved accuracy")
    ax.set_title("AQGAN: target vs achieved")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def anytime_band(runs: pd.DataFrame) -> pd.DataFrame:
    """One method's best within budget at one design point per evaluation (1-based index):
    median, min and max over seeds, kept only where every seed's trace reaches that far and has
    found a config within budget (no value is carried past a trace's end)."""
    per_seed = runs.groupby(["index", "seed"])["best_so_far_val_acc"].max().unstack("seed")
    per_seed = per_seed.dropna(how="any")
    band = pd.DataFrame(
        {"median": per_seed.median(axis=1), "low": per_seed.min(axis=1),
         "high": per_seed.max(axis=1)}
    )  # fmt: skip
    band.index = band.index + 1
    return band


def plot_anytime(cost: pd.DataFrame, traces: pd.DataFrame, path: Path) -> Path | None:
    """One panel per design point a searching method ran on: its ``anytime_band``; AQGAN as
    points at its marginal and amortized evaluations (means over seeds), with a dashed line at
    its accuracy less ``MATCH_TOLERANCE``; the other one-time methods as small markers."""
    searched = traces[traces["method"].isin(SEARCHING)]
    keys = sorted(set(zip(searched["hw"], searched["metric"], searched["budget"], strict=True)))
    if not keys:
        return None
    cols = min(3, len(keys))
    n_rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(4.6 * cols + 1.8, 3.6 * n_rows), squeeze=False,
                             layout="constrained")  # fmt: skip
    flat = list(axes.flat)
    for ax, (hw, metric, budget) in zip(flat, keys, strict=False):
        at, point = _at(searched, hw, metric, budget), _at(cost, hw, metric, budget)
        for method in [m for m in SEARCHING if m in set(at["method"])]:
            band = anytime_band(at[at["method"] == method])
            ax.step(band.index, band["median"], where="post", color=COLORS[method], label=method)
            ax.fill_between(band.index, band["low"], band["high"], step="post",
                            color=COLORS[method], alpha=0.2, lw=0)  # fmt: skip
        _one_time_markers(ax, point)
        ax.set_xscale("log")
        ax.set_xlabel("evaluations")
        ax.set_ylabel("best validation accuracy within budget")
        limit = _budget_text(point.iloc[0]) if len(point) else f"{budget:.4g}"
        ax.set_title(f"{hw}, {metric} <= {limit}", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in flat[len(keys) :]:
        ax.set_visible(False)
    fig.legend(*_legend_entries(flat), loc="outside right upper", fontsize=8)
    return _save(fig, path)


def _at(frame: pd.DataFrame, hw: str, metric: str, budget: float) -> pd.DataFrame:
    return frame[(frame["hw"] == hw) & (frame["metric"] == metric) & (frame["budget"] == budget)]


def _one_time_markers(ax, point: pd.DataFrame) -> None:
    """AQGAN's choice at one design point (validation accuracy, mean over seeds) at its marginal
    and amortized evaluations; store-best and the other one-time methods at their evaluations."""
    aqgan = point[point["method"] == "aqgan"]
    if aqgan["val_acc"].notna().any():
        acc, color = aqgan["val_acc"].mean(), COLORS["aqgan"]
        ax.plot(aqgan["evaluations"].mean(), acc, "o", ms=8, color=color, label="aqgan marginal")
        ax.plot(aqgan["amortized_evaluations"].mean(), acc, "D", ms=8, mfc="none", mec=color,
                mew=1.5, label="aqgan amortized")  # fmt: skip
        ax.axhline(acc - MATCH_TOLERANCE, color=color, ls="--", lw=1,
                   label=f"aqgan - {MATCH_TOLERANCE:g}")  # fmt: skip
    for method in [m for m in METHOD_ORDER if METHODS[m].one_time and m != "aqgan"]:
        rows = point[point["method"] == method]
        if rows["val_acc"].notna().any():
            ax.plot(rows["evaluations"].mean(), rows["val_acc"].mean(), "v", ms=6,
                    color=COLORS[method], label=method)  # fmt: skip


def plot_cost_to_match(cost: pd.DataFrame, path: Path) -> Path | None:
    """Per design point, each searching method's evaluations to match AQGAN's choice (mean over
    seeds; a seed that never matched counts at what it spent, so that bar is a lower bound,
    hatched with an arrow up) beside AQGAN's marginal and amortized evaluations; None where no
    searching method ran where AQGAN chose something."""
    if "evaluations_to_match" not in cost:
        return None
    rows = match_rows(cost)
    rows = rows[rows["method"].isin(SEARCHING) & rows["aqgan_val_acc"].notna()]
    if not len(rows):
        return None
    rows = rows.assign(point=_point_key(rows))
    points = list(dict.fromkeys(rows["point"]))
    aqgan = cost[cost["method"] == "aqgan"]
    aqgan = aqgan.assign(point=_point_key(aqgan)).groupby("point")
    methods = [m for m in SEARCHING if m in set(rows["method"])]
    bars = [
        *((m, rows[rows["method"] == m].groupby("point"), COLORS[m]) for m in methods),
        ("aqgan marginal", aqgan, COLORS["aqgan"]),
        ("aqgan amortized", aqgan, "salmon"),
    ]
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(points) * len(bars) + 2) + 2.2, 4.0))
    column = {"aqgan marginal": "evaluations", "aqgan amortized": "amortized_evaluations"}
    tops = [1.0]
    for j, (label, groups, color) in enumerate(bars):
        heights = groups[column.get(label, "to_match")].mean().reindex(points)
        bound = (
            ~groups["matched"].all().reindex(points, fill_value=True)
            if label in methods
            else pd.Series(False, index=points)
        )
        xs = [i + (j - (len(bars) - 1) / 2) * width for i in range(len(points))]
        for x, height, lower in zip(xs, heights, bound, strict=True):
            if pd.isna(height):
                continue
            ax.bar(x, height, width, color=color, edgecolor="black", lw=0.5,
                   hatch="//" if lower else None, label=label)  # fmt: skip
            tops.append(height)
            if lower:
                ax.annotate("", xy=(x, height * 2.2), xytext=(x, height),
                            arrowprops={"arrowstyle": "->", "color": "black"})  # fmt: skip
    ax.set_xticks(range(len(points)), points, rotation=20, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(0.8, max(tops) * 4)
    ax.set_ylabel("evaluations (mean over seeds)")
    ax.set_title("evaluations to reach AQGAN's validation accuracy")
    handles, labels = _legend_entries([ax])
    lower = Patch(facecolor="white", edgecolor="black", hatch="//")
    ax.legend([*handles, lower], [*labels, "a seed never matched: lower bound"], fontsize=8,
              loc="upper left", bbox_to_anchor=(1.01, 1.0))  # fmt: skip
    fig.tight_layout()
    return _save(fig, path)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(frame: pd.DataFrame, index_name: str) -> str:
    header = [index_name, *frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in frame.iterrows():
        lines.append("| " + " | ".join([str(index), *(_fmt(v) for v in row.values)]) + " |")
    return "\n".join(lines)


def load_fidelity(run_dir: Path, summary: dict) -> pd.DataFrame | None:
    """Every seed's verified fidelity proposals (``fidelity.parquet`` of each seed's folder),
    with a ``seed`` column."""
    reps = summary.get("replicates") or [{"seed": 0, "run_dir": "."}]
    frames = []
    for rep in reps:
        path = run_dir / rep["run_dir"] / "fidelity.parquet"
        if path.is_file():
            frames.append(read_frame(path).assign(seed=rep["seed"]))
    return pd.concat(frames, ignore_index=True) if frames else None


def fidelity_lines(fidelity: pd.DataFrame) -> list[str]:
    """The paper's flow (the checkpoint proposes, each proposal verified once): mean |achieved
    - target| on the validation split, and on the test split measured after the choice."""
    errors = fidelity.assign(
        val=(fidelity["achieved_val_acc"] - fidelity["target_acc"]).abs(),
        test=(fidelity["achieved_test_acc"] - fidelity["target_acc"]).abs()
        if "achieved_test_acc" in fidelity
        else float("nan"),
    )
    per_seed = errors.groupby("seed").agg(
        val=("val", "mean"), test=("test", "mean"), max=("val", "max")
    )
    n_seeds = len(per_seed)

    def figure(column: str) -> str:
        values = 100 * per_seed[column]
        if values.isna().all():
            return "not measured"
        std = values.std(ddof=1) if n_seeds > 1 else float("nan")
        return f"{values.mean():.2f}" + ("" if pd.isna(std) else f" ± {std:.2f}") + " points"

    return [
        f"Verify once, checkpoint only (the paper's flow): {len(fidelity) // n_seeds} proposals "
        f"over {fidelity.groupby('seed')['target_acc'].nunique().iloc[0]} targets per seed, "
        f"{n_seeds} seed(s). Mean |achieved - target| on the validation split "
        f"{figure('val')}; on the test split, scored once after the choice, {figure('test')} "
        f"(largest validation miss {100 * per_seed['max'].max():.2f} points).",
        "",
    ]


def build(run_dir: Path) -> Path:
    """Write ``report.md`` and its plots into ``run_dir``; returns the report's path."""
    cost, traces, _, summary = load_tables(run_dir)
    fidelity = load_fidelity(run_dir, summary)
    chance = summary.get("chance_acc")
    plots = {
        "accuracy against budget": plot_accuracy_vs_budget(
            cost, run_dir / "accuracy_vs_budget.png"
        ),
        "search cost": plot_search_cost(cost, run_dir / "search_cost.png"),
    }
    if fidelity is not None and len(fidelity):
        plots["AQGAN fidelity"] = plot_fidelity(fidelity, run_dir / "fidelity.png")
    anytime = plot_anytime(cost, traces, run_dir / "anytime.png")
    if anytime is not None:
        plots["anytime curves"] = anytime
    to_match = plot_cost_to_match(cost, run_dir / "cost_to_match.png")
    if to_match is not None:
        plots["evaluations to match AQGAN"] = to_match
    seeds = sorted(cost["seed"].unique())
    lines = [f"# aqgan-ray report: {summary.get('experiment', run_dir.name)}", ""]
    if summary:
        space = (
            "the first layer's weights at 8 bits with the image unquantized and the last layer "
            "at W8/A8 (HAQ's search space), for every method"
            if summary.get("keep_first_last")
            else "every layer free, the first and last included, for every method"
        )
        lines += [
            f"{summary['model']} on {summary['dataset']}; float accuracy: validation "
            f"{summary['fp_val_acc']:.4f}, test {summary['fp_test_acc']:.4f}. Searches score "
            "configs on the validation split; every accuracy below called *test* is the "
            "held-out test split, measured once per chosen config. Search space: "
            f"{space}. Seeds: {', '.join(str(s) for s in seeds)}; each repeats collection, "
            "AQGAN's training and every search.",
            "",
        ]
        reps = summary.get("replicates") or [{"one_time": summary.get("one_time", {})}]
        ones = [r["one_time"] for r in reps if r.get("one_time")]
        if ones:
            one = ones[0]
            mean = {k: sum(o[k] for o in ones) / len(ones) for k in
                    ("collect_evaluations", "refine_evaluations", "fidelity_evaluations",
                     "eval_cpu_s", "train_s")}  # fmt: skip
            lines += [
                f"AQGAN's one-time cost per seed (mean of {len(ones)}): "
                f"{mean['collect_evaluations']:.0f} evaluations to collect its store, "
                f"{mean['refine_evaluations']:.0f} of active refinement and "
                f"{mean['fidelity_evaluations']:.0f} to verify fidelity after training "
                f"({mean['eval_cpu_s']:.0f} evaluator seconds), and {mean['train_s']:.0f} s of "
                f"training, shared by {one['design_points']} design points. It trains only on "
                "the evaluations it paid for (its collection and refinement), never on another "
                "method's.",
                "",
            ]
        passes = [r["sensitivity"] for r in reps if r.get("sensitivity")]
        if passes:
            lines += [_sensitivity_line(passes, cost), ""]
        for note in summary.get("notes", []):
            lines += [f"*Note:* {note}", ""]
    lines += _comparison_sections(cost, chance)
    lines += ["## Per design point", "",
              "Evaluations, means over seeds.", "",
              markdown_table(point_table(cost), "design point"), "",
              "Validation accuracy (what each search chose on) and test accuracy of the choice, "
              "mean ± std over the seeds that found a config within budget.", "",
              markdown_table(accuracy_table(cost), "design point"), ""]  # fmt: skip
    tuning = tuning_table(cost)
    if tuning is not None:
        lines += [
            "## AQGAN's hardware tuning against uniform quantization, its own store and the ILP",
            "",
            "Per hardware model and budget, means over seeds: the validation accuracy each "
            "selected (what selection sees), AQGAN's margin over the better of uniform and "
            "store-best and its difference from the ILP in points, their test accuracy, "
            "AQGAN's verified evaluations and where its choices "
            "came from (generator, store, bred; +tuned: projected onto the budget or filled).",
            "",
            markdown_table(tuning, "design point"),
            "",
        ]
    matched = match_table(cost) if "evaluations_to_match" in cost else None
    if matched is not None:
        lines += ["## Cost to match AQGAN", "", *_match_legend(matched), "",
                  markdown_table(matched, "design point"), ""]  # fmt: skip
    if fidelity is not None and len(fidelity):
        lines += ["## AQGAN fidelity", "", *fidelity_lines(fidelity)]
    for title, path in plots.items():
        lines += [f"## {title[0].upper()}{title[1:]}", "", f"![{title}]({path.name})", ""]
    return write_text(run_dir / "report.md", "\n".join(lines))


def _match_legend(matched: pd.DataFrame) -> list[str]:
    """What the cost-to-match table's columns mean, for the columns it has."""
    lines = [
        "Evaluations each search needed before its best config within budget first reached the "
        "validation accuracy AQGAN selected at the same design point and seed (*aqgan val acc*; "
        "blank: AQGAN chose nothing there); *> N*: never, within the N it spent."
    ]
    if "evaluations_to_match_0_5" in matched:
        lines[0] += (
            f" *evaluations_to_match_0_5*: the same, to within {MATCH_TOLERANCE:g} of AQGAN's "
            "accuracy."
        )
    if "eval_cpu_s_to_match" in matched:
        lines[0] += " *eval_cpu_s_to_match*: the evaluator seconds spent until the match."
    if "break_even_points" in matched:
        lines += [
            "",
            "*break_even_points*: the design points AQGAN's one-time cost must be shared by "
            "before AQGAN (that share plus its marginal cost) is cheaper per point than the "
            "search; *<= k* where the search never matched (its cost to match is then a lower "
            "bound), *never* where the search costs no more per point than AQGAN's marginal. "
            "Counted in evaluations, AQGAN's fidelity checks included, its training time not.",
        ]
    if "break_even_points_s" in matched:
        lines[-1] += (
            " *break_even_points_s*: the same in evaluator seconds, AQGAN's training seconds "
            "added to its one-time cost."
        )
    return lines


def _sensitivity_line(passes: list[dict[str, Any]], cost: pd.DataFrame) -> str:
    """The ILP's one-time cost: its sensitivity pass per seed, and its solves per point."""
    first = passes[0]
    seconds = sum(p["seconds"] for p in passes) / len(passes)
    evaluations = sum(p["evaluations"] for p in passes) / len(passes)
    threads = f" on {first['threads']} thread(s)" if "threads" in first else ""
    solves = cost.loc[cost["method"] == "ilp", "decide_s"] if "decide_s" in cost else None
    solved = (
        f"; each point then solves its integer program ({solves.mean():.2f} s on average) and "
        "verifies what it found"
        if solves is not None and solves.notna().any()
        else ""
    )
    return (
        f"The ILP's one-time cost per seed (mean of {len(passes)}): its sensitivity pass on "
        f"{first['images']} calibration images ({first['probes']} Hutchinson probes per batch), "
        f"{seconds:.0f} s in the driver{threads}, counted as {evaluations:.1f} evaluations at "
        f"the store's median evaluation time, shared by {first['design_points']} design "
        f"points{solved}."
    )


def _comparison_sections(cost: pd.DataFrame, chance: float | None) -> list[str]:
    """Every method on the points they all ran on; then, where some methods ran on fewer, the
    methods that ran everywhere on every point."""
    counted = (
        f"A point where a method found nothing within budget counts at chance accuracy "
        f"({chance:.4g})."
        if chance is not None
        else "A point where a method found nothing within budget is left out of its mean."
    )
    legend = (
        f"Mean over seeds ± their standard deviation; *vs aqgan* is the paired difference in "
        f"test accuracy, marked * only when larger than its spread over seeds. {counted}"
    )
    all_points = cost.assign(point=_point_key(cost))["point"].nunique()
    table = summary_table(cost, chance)
    n_shared = int(table["points"].max()) if len(table) else 0
    lines = [
        "## Search cost and accuracy per method",
        "",
        f"On the {n_shared} of {all_points} design points every method ran on. {legend}",
        "",
        markdown_table(readable_summary(table), "method"),
        "",
    ]
    points_of = cost.assign(point=_point_key(cost)).groupby("method")["point"].nunique()
    everywhere = [m for m in METHOD_ORDER if points_of.get(m, 0) == all_points]
    if n_shared < all_points and len(everywhere) > 1:
        wide = summary_table(cost[cost["method"].isin(everywhere)], chance)
        lines += [
            f"### {', '.join(everywhere)} on all {all_points} design points",
            "",
            markdown_table(readable_summary(wide), "method"),
            "",
        ]
    return lines


def compare(dirs: list[Path]) -> pd.DataFrame:
    """One table across result directories (``results/<experiment>`` folders of finished runs):
    per run and method, the summary table's columns (the points every method ran on)."""
    frames = []
    for folder in dirs:
        path = Path(folder) / "search_cost.parquet"
        if not path.is_file():
            raise UserError(
                f"{folder} holds no search_cost.parquet; give results/<experiment> directories "
                "of finished runs"
            )
        summary_path = Path(folder) / "run.json"
        chance = read_json(summary_path).get("chance_acc") if summary_path.is_file() else None
        table = summary_table(read_frame(path), chance).reset_index()
        frames.append(table.assign(run=str(folder)))
    rows = pd.concat(frames, ignore_index=True)
    return rows[["run", *[c for c in rows.columns if c != "run"]]]


def _save(fig, path: Path) -> Path:
    """A figure written atomically, like every other file of a run."""
    write_atomic(path, lambda fh: fig.savefig(fh, dpi=110, format="png"))
    plt.close(fig)
    return path
