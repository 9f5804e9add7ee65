"""plots/reward_kl_frontier.png: generation score and win rate against how far the policy moved from the reference
(gen/kl_to_ref; gen/logratio_to_ref when the points are not in the KL regime, labelled so).

Every point is drawn, coloured by the first swept parameter (beta first); the Pareto points (a multi-objective
search's own front where there is one, else the points no other beats on both axes: less KL and a higher score) are
ringed and named. A few points (<= `FEW`) also get their ± 1 standard error over prompts both ways and a name each,
as the 3-point demo always had; with seeds swept, per-configuration means with 95% intervals over seeds are added
while there are few configurations. A search under limits (hparams_search=dpo_kl_budget) adds its KL budget as a
vertical line and crosses out the points over a limit (the KL budget or eval.max_fluency_drop): those are never its
best. What each panel shows goes into plots/plots.json. Not drawn when the scorer gave every answer the same score
(`flat.py`: the report says so instead).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dpo_sweeps.report import flat
from dpo_sweeps.report.points import is_numeric_param, point_label, value_order
from dpo_sweeps.report.seeds import SEED_KEY, group_by_config, mean_ci95, seeds_swept
from dpo_sweeps.runs.reading import RunRecord, finite, number

FRONTIER_PNG = "reward_kl_frontier.png"
KL_KEY = "gen/kl_to_ref"
# The same mean outside the KL regime (dpo_sweeps/eval/measures.py): drawn, but never called a KL.
LOGRATIO_KEY = "gen/logratio_to_ref"
X_LABELS = {
    KL_KEY: "KL to reference (nats, gen/kl_to_ref)",
    LOGRATIO_KEY: "log-ratio to reference (nats, gen/logratio_to_ref): not a KL, see gen/kl_regime_note",
}
# y axes of the frontier: (metrics.json key, label).
FRONTIER_PANELS = (("gen/score_after", "generation score after training"), ("gen/win_rate_vs_ref", "win rate vs ref"))
# Up to this many points every point is named and gets its error bars; past it only the Pareto points are named.
FEW = 12
# Names on the plot at most (the Pareto set of a big sweep can be long; plots.json lists all of it).
MAX_NAMED = 8


def frontier_x(points: list[RunRecord]) -> str:
    """The frontier's x: gen/kl_to_ref when any point measured a KL, else gen/logratio_to_ref (never both on one
    axis: a sweep that mixes them draws the KL points and lists the others as excluded)."""
    if any(finite(p.value(LOGRATIO_KEY)) for p in points) and not any(finite(p.value(KL_KEY)) for p in points):
        return LOGRATIO_KEY
    return KL_KEY


def pareto_front(xy: list[tuple[float, float, RunRecord]]) -> list[RunRecord]:
    """The points no other has both a smaller x (KL) and a larger y (score) than: sorted by x, a point is on the front
    when its y beats every y before it (n log n)."""
    front, best = [], -math.inf
    for _x, y, p in sorted(xy, key=lambda t: (t[0], -t[1])):
        if y > best:
            front.append(p)
            best = y
    return front


def colours(plt, points: list[RunRecord], key: str | None):
    """(colour per point, how to say what the colours mean): a colour map for a numeric parameter (log-scaled when
    its values span 20x), categories otherwise."""
    if key is None:
        return ["tab:blue"] * len(points), None
    if is_numeric_param(points, key):
        from matplotlib.colors import LogNorm, Normalize

        values = [number(p.overrides.get(key)) for p in points]
        lo, hi = min(values), max(values)
        norm = LogNorm(lo, hi) if lo > 0 and hi / lo >= 20 else Normalize(lo, hi if hi > lo else lo + 1)
        cmap = plt.get_cmap("viridis")
        return list(cmap(norm(values))), ("colorbar", cmap, norm)  # one call: per value it costs ~1 ms
    categories = sorted({p.overrides.get(key, "-") for p in points}, key=value_order)
    cmap = plt.get_cmap("tab10" if len(categories) <= 10 else "tab20")
    index = {c: i for i, c in enumerate(categories)}
    return [cmap(index[p.overrides.get(key, "-")] % cmap.N) for p in points], ("legend", cmap, categories)


def over_limits(points: list[RunRecord], limits: dict[str, float]) -> set[str]:
    """The points (names) whose measured value of a limited metric exceeds its limit."""
    return {p.name for p in points for m, v in limits.items() if finite(p.value(m)) and p.value(m) > v}


def plot_frontier(
    plt,
    plots_dir: Path,
    points: list[RunRecord],
    swept: list[str],
    pareto: set[str] | None = None,
    limits: dict[str, float] | None = None,
) -> dict[str, Any] | None:
    """Score / win rate against KL to the reference, one dot per point (see the module docstring).
    `pareto`: the point folders a multi-objective search found Pareto-optimal (ringed, listed in the manifest).
    `limits`: {metric: most allowed} of a search under limits (the budget line; points over a limit crossed out).
    None when no point ran the generation eval at all (eval.gen_prompts=0, or older runs)."""
    if not any(k.startswith("gen/") for p in points for k in p.metrics):
        return None
    x_key = frontier_x(points)
    entry: dict[str, Any] = {"file": FRONTIER_PNG, "kind": "frontier", "x": x_key, "x_label": X_LABELS[x_key]}
    entry["panels"] = []
    have = [p for p in points if finite(p.value(x_key)) and any(finite(p.value(k)) for k, _ in FRONTIER_PANELS)]
    have_ids = {id(p) for p in have}  # by identity: `p not in have` compared dataclasses pairwise (quadratic)
    other = ({KL_KEY, LOGRATIO_KEY} - {x_key}).pop()
    excluded = [p.name for p in points if id(p) not in have_ids and finite(p.value(other))]
    if excluded:
        entry["excluded"] = {"points": excluded, "reason": f"they have {other}, not {x_key}"}
    if not have:
        entry["skipped"] = f"no point has {x_key} and a generation score (is a scorer configured? see gen/score_note)"
        return entry
    nothing = flat.scorer_reason(have)
    if nothing and not limits and not pareto:  # dots on one line would look like a result
        return flat.skip(entry, nothing)
    if nothing:  # a search under limits (the budget, the points over it) or a Pareto search (which trials its own
        # objectives ranked best) still says something; the scores do not, and the figure says so
        entry[flat.SCORES_SAY_NOTHING] = nothing
    with_seeds = seeds_swept(swept)
    few = len(have) <= FEW
    groups = group_by_config(have, swept) if with_seeds else {}
    colour_key = next((k for k in swept if k != SEED_KEY), None)
    entry["colour"] = colour_key
    limits = limits or {}
    infeasible = over_limits(have, limits)
    if limits:
        entry["limits"] = dict(limits)
        entry["infeasible"] = sorted(infeasible)
    fig, axes = plt.subplots(1, len(FRONTIER_PANELS), figsize=(6.5 * len(FRONTIER_PANELS), 4.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], FRONTIER_PANELS, strict=True):
        panel: dict[str, Any] = {"y": key, "points": [], "configs": []}
        xy = [(p.value(x_key), p.value(key), p) for p in have if finite(p.value(key))]
        dot_colours, legend = colours(plt, [p for _, _, p in xy], colour_key)
        if few and not with_seeds:
            # One seed: the only spread there is is over the prompts (standard error of each mean).
            for (x, y, p), colour in zip(xy, dot_colours, strict=True):
                xe, ye = p.value(f"{x_key}_se"), p.value(f"{key}_se")
                ax.errorbar(x, y, xerr=xe if finite(xe) else 0.0, yerr=ye if finite(ye) else 0.0, fmt="none",
                            ecolor=colour, capsize=3, alpha=0.7)  # fmt: skip
        size = 40 if few else max(6, 30 - len(xy) // 100)
        ax.scatter([x for x, _, _ in xy], [y for _, y, _ in xy], c=dot_colours, s=size, alpha=0.9 if few else 0.55,
                   linewidths=0, zorder=3)  # fmt: skip
        front = [p for _, _, p in xy if p.name in pareto] if pareto else pareto_front(xy)
        front_ids = {id(p) for p in front}
        ring = sorted(((x, y, p) for x, y, p in xy if id(p) in front_ids), key=lambda t: (t[0], t[1]))
        what = f"Pareto-optimal{' (search)' if pareto else ''}: {len(ring)}"
        ax.scatter([x for x, _, _ in ring], [y for _, y, _ in ring], s=170 if len(ring) <= 30 else 60,
                   facecolors="none", edgecolors="red", linewidths=1.5 if len(ring) <= 30 else 0.8, zorder=4,
                   label=what + (f", {MAX_NAMED} named" if not few and len(ring) > MAX_NAMED else ""))  # fmt: skip
        if x_key in limits:
            ax.axvline(limits[x_key], color="black", linestyle="--", linewidth=1,
                       label=f"KL budget {limits[x_key]:g} nats (objective.kl_budget)")  # fmt: skip
        crossed = [(x, y) for x, y, p in xy if p.name in infeasible]
        if crossed:
            ax.scatter([x for x, _ in crossed], [y for _, y in crossed], marker="x", s=90, color="black", zorder=5,
                       label=f"over a limit (infeasible): {len(crossed)}")  # fmt: skip
        panel["pareto"] = sorted(p.name for p in front)
        # Few points: all named. Else Pareto points evenly spread along the front, so that the names do not pile up.
        named = (
            xy if few or not ring else [ring[round(i * (len(ring) - 1) / (MAX_NAMED - 1))] for i in range(MAX_NAMED)]
        )
        for j, (x, y, p) in enumerate(sorted({id(t[2]): t for t in named}.values(), key=lambda t: t[0])):
            ax.annotate(point_label(p, swept), (x, y), fontsize="x-small", xytext=(6, -12 if j % 2 else 6),
                        textcoords="offset points", zorder=5)  # fmt: skip
        for x, y, p in xy:
            point: dict[str, Any] = {"point": p.name, "x": x, "y": y}
            if not with_seeds:
                point.update(x_se=p.value(f"{x_key}_se"), y_se=p.value(f"{key}_se"))
            panel["points"].append(point)
        for label, group in groups.items():
            mx, cx = mean_ci95([p.value(x_key) for p in group if finite(p.value(key))])
            my, cy = mean_ci95([p.value(key) for p in group if finite(p.value(key))])
            if mx is None or my is None:
                continue
            panel["configs"].append({"config": label, "x": mx, "y": my, "x_ci95": cx, "y_ci95": cy, "n": len(group)})
            if len(groups) <= FEW:
                ax.errorbar(mx, my, xerr=cx or 0, yerr=cy or 0, fmt="s", color="black", capsize=3, alpha=0.7,
                            label=f"{label} (mean, 95%)")  # fmt: skip
        say_colours(plt, fig, ax, legend, colour_key)
        ax.set_xlabel(X_LABELS[x_key], fontsize="small")
        ax.set_ylabel(key)
        ax.set_title(f"{title} ({len(xy)} points)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small", loc="best")
        entry["panels"].append(panel)
    moved = "how far the policy moved" if x_key == KL_KEY else "the log-ratio to the reference (not a KL)"
    note = "\n(the scores say nothing: every answer scored the same, see plots.json)" if nothing else ""
    fig.suptitle(f"reward-KL frontier: what the answers gained against {moved}{note}")
    fig.tight_layout()
    fig.savefig(plots_dir / FRONTIER_PNG, dpi=100)
    plt.close(fig)
    return entry


def say_colours(plt, fig, ax, legend, key: str | None) -> None:
    """A colour bar for a numeric parameter; a short legend of its values for a categorical one."""
    if legend is None:
        return
    kind, cmap, what = legend
    if kind == "colorbar":
        mappable = plt.cm.ScalarMappable(norm=what, cmap=cmap)
        fig.colorbar(mappable, ax=ax, label=key, fraction=0.05, pad=0.02)
        return
    for i, category in enumerate(what[:12]):
        ax.scatter([], [], color=cmap(i % cmap.N), s=30, label=f"{key}={category}")
