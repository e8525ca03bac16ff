"""The report: ``report.md`` and its PNG plots, built from the run's Parquet tables only, so
``aqgan-ray report`` can rebuild it at any time, and ``compare`` across runs.

Plots (matplotlib, Agg): accuracy reached against the budget per hardware model and method;
search cost per design point per method (log scale, AQGAN marginal and amortized); AQGAN's
target against achieved accuracy; anytime curves (best within budget against evaluations) where
the searching baselines ran.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from aqgan_ray.atomic import write_atomic, write_text  # noqa: E402
from aqgan_ray.errors import UserError  # noqa: E402
from aqgan_ray.store import read_frame  # noqa: E402
from baselines import METHODS  # noqa: E402

METHOD_ORDER = tuple(METHODS)
COLORS = {name: method.color for name, method in METHODS.items()}


def load_tables(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None, dict]:
    cost_path = run_dir / "search_cost.parquet"
    if not cost_path.is_file():
        raise UserError(
            f"{run_dir} holds no search_cost.parquet; run `aqgan-ray run` for this experiment "
            "first (or point --results at the directory that holds it)"
        )
    summary_path = run_dir / "run.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    fidelity_path = run_dir / "fidelity.parquet"
    fidelity = read_frame(fidelity_path) if fidelity_path.is_file() else None
    return read_frame(cost_path), read_frame(run_dir / "traces.parquet"), fidelity, summary


def summary_table(cost: pd.DataFrame) -> pd.DataFrame:
    """One row per method: design points, mean search cost, accuracy reached."""
    grouped = cost.groupby("method", sort=False)
    table = pd.DataFrame(
        {
            "design points": grouped.size(),
            "evaluations / point": grouped["evaluations"].mean(),
            "amortized / point": grouped["amortized_evaluations"].mean(),
            "eval CPU s / point": grouped["eval_cpu_s"].mean(),
            "mean val acc": grouped["val_acc"].mean(),
            "mean test acc": grouped["test_acc"].mean(),
            "within budget": grouped["within_budget"].mean(),
        }
    )
    order = [m for m in METHOD_ORDER if m in table.index]
    return table.loc[order]


def point_table(cost: pd.DataFrame) -> pd.DataFrame:
    """Per design point: each method's evaluations and test accuracy side by side."""
    cost = cost.assign(
        point=cost["hw"] + " " + cost["metric"] + " " + cost.apply(_budget_text, axis=1)
    )
    evaluations = cost.pivot_table(index="point", columns="method", values="evaluations")
    amortized = cost[cost["method"] == "aqgan"].set_index("point")["amortized_evaluations"]
    test = cost.pivot_table(index="point", columns="method", values="test_acc")
    out = pd.DataFrame(index=evaluations.index)
    for method in [m for m in METHOD_ORDER if m in evaluations.columns]:
        out[f"{method} evals"] = evaluations[method]
        if method == "aqgan":
            out["aqgan amortized"] = amortized
        out[f"{method} test acc"] = test[method]
    return out


def _budget_text(row: pd.Series) -> str:
    if row["budget_fraction"] is not None and not pd.isna(row["budget_fraction"]):
        return f"{row['budget_fraction']:g}x"
    return f"{row['budget']:.4g}"


def plot_accuracy_vs_budget(cost: pd.DataFrame, path: Path) -> Path:
    hws = list(dict.fromkeys(cost["hw"]))
    fig, axes = plt.subplots(1, len(hws), figsize=(4.2 * len(hws), 3.6), squeeze=False)
    for ax, hw in zip(axes[0], hws, strict=True):
        sub = cost[cost["hw"] == hw]
        x_col = "budget_fraction" if sub["budget_fraction"].notna().all() else "budget"
        for method in [m for m in METHOD_ORDER if m in set(sub["method"])]:
            rows = sub[sub["method"] == method].groupby(x_col)["test_acc"].mean().sort_index()
            ax.plot(rows.index, rows.values, "o-", color=COLORS[method], label=method)
        ax.set_title(f"{hw} ({sub['metric'].iloc[0]})")
        ax.set_xlabel("budget (fraction of all-8-bit)" if x_col == "budget_fraction" else "budget")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    handles = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    axes[0][0].legend(handles.values(), handles.keys(), fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_search_cost(cost: pd.DataFrame, path: Path) -> Path:
    summary = summary_table(cost)
    labels, values, colors = [], [], []
    for method, row in summary.iterrows():
        labels.append(method)
        values.append(row["evaluations / point"])
        colors.append(COLORS[method])
        if method == "aqgan":
            labels.append("aqgan\namortized")
            values.append(row["amortized / point"])
            colors.append("salmon")
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
    ax.scatter(fidelity["target_acc"], fidelity["achieved_val_acc"], color=COLORS["aqgan"], s=18)
    lo = float(min(fidelity["target_acc"].min(), fidelity["achieved_val_acc"].min()))
    hi = float(max(fidelity["target_acc"].max(), fidelity["achieved_val_acc"].max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="achieved = target")
    ax.set_xlabel("target accuracy")
    ax.set_ylabel("achieved validation accuracy")
    ax.set_title("AQGAN: target vs achieved")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_anytime(cost: pd.DataFrame, traces: pd.DataFrame, path: Path) -> Path | None:
    searching = [name for name, method in METHODS.items() if method.searching]
    searched = cost[cost["method"].isin(searching)]
    keys = list(
        dict.fromkeys(zip(searched["hw"], searched["budget"], searched["seed"], strict=True))
    )
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.6), squeeze=False)
    for ax, (hw, budget, seed) in zip(axes[0], keys, strict=True):
        at = traces[(traces["hw"] == hw) & (traces["budget"] == budget) & (traces["seed"] == seed)]
        for method in [m for m in METHOD_ORDER if m in set(at["method"])]:
            rows = at[at["method"] == method].sort_values("index")
            if method == "aqgan":
                best = rows["best_so_far_val_acc"].max()
                ax.axhline(best, color=COLORS[method], ls="--", label="aqgan (selected)")
                continue
            ax.step(rows["index"] + 1, rows["best_so_far_val_acc"], where="post",
                    color=COLORS[method], label=method)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("evaluations")
        ax.set_ylabel("best validation accuracy within budget")
        ax.set_title(f"{hw}, {at['metric'].iloc[0]} <= {budget:.4g}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
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


def build(run_dir: Path) -> Path:
    """Write ``report.md`` and its plots into ``run_dir``; returns the report's path."""
    cost, traces, fidelity, summary = load_tables(run_dir)
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
    lines = [f"# aqgan-ray report: {summary.get('experiment', run_dir.name)}", ""]
    if summary:
        lines += [
            f"{summary['model']} on {summary['dataset']}; float accuracy: validation "
            f"{summary['fp_val_acc']:.4f}, test {summary['fp_test_acc']:.4f}. Searches score "
            "configs on the validation split; every accuracy below called *test* is the "
            "held-out test split, measured once per chosen config.",
            "",
        ]
        one = summary.get("one_time", {})
        if one:
            lines += [
                f"AQGAN's one-time cost: {one['collect_evaluations']} evaluations to collect the "
                f"store, {one.get('refine_evaluations', 0)} of active refinement and "
                f"{one['fidelity_evaluations']} to verify fidelity after training "
                f"({one['eval_cpu_s']:.0f} evaluator seconds), and {one['train_s']:.0f} s of "
                f"training, shared by {one['design_points']} design points.",
                "",
            ]
        for note in summary.get("notes", []):
            lines += [f"*Note:* {note}", ""]
    lines += [
        "## Search cost and accuracy per method",
        "",
        markdown_table(summary_table(cost), "method"),
        "",
    ]
    lines += ["## Per design point", "", markdown_table(point_table(cost), "design point"), ""]
    matched = cost[cost["method"] != "aqgan"]
    if len(matched):
        lines += [
            "## Cost to match AQGAN",
            "",
            "Evaluations each search needed before its best config within budget first reached "
            "the validation accuracy AQGAN selected at the same design point (empty: never, "
            "within its evaluations).",
            "",
            markdown_table(
                matched.set_index(matched["hw"] + " " + matched.apply(_budget_text, axis=1))[
                    ["method", "evaluations", "evaluations_to_match"]
                ],
                "design point",
            ),
            "",
        ]
    if fidelity is not None and len(fidelity):
        errors = (fidelity["achieved_val_acc"] - fidelity["target_acc"]).abs()
        lines += [
            "## AQGAN fidelity",
            "",
            f"{len(fidelity)} verified proposals over {fidelity['target_acc'].nunique()} targets: "
            f"mean |achieved - target| {100 * errors.mean():.2f} points, max "
            f"{100 * errors.max():.2f}.",
            "",
        ]
    for title, path in plots.items():
        lines += [f"## {title[0].upper()}{title[1:]}", "", f"![{title}]({path.name})", ""]
    return write_text(run_dir / "report.md", "\n".join(lines))


def compare(dirs: list[Path]) -> pd.DataFrame:
    """One table across result directories (``results/<experiment>`` folders of finished runs):
    per run and method, the summary table's columns."""
    frames = []
    for folder in dirs:
        path = Path(folder) / "search_cost.parquet"
        if not path.is_file():
            raise UserError(
                f"{folder} holds no search_cost.parquet; give results/<experiment> directories "
                "of finished runs"
            )
        table = summary_table(read_frame(path)).reset_index()
        frames.append(table.assign(run=str(folder)))
    rows = pd.concat(frames, ignore_index=True)
    return rows[["run", *[c for c in rows.columns if c != "run"]]]


def _save(fig, path: Path) -> Path:
    """A figure written atomically, like every other file of a run."""
    write_atomic(path, lambda fh: fig.savefig(fh, dpi=110, format="png"))
    plt.close(fig)
    return path
