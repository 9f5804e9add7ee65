"""summary.html: one self-contained interactive page per sweep (no network: Plotly's script is inlined, no CDN).

What it shows: a sortable, filterable table of every point (parameters, state, objective, key metrics, links to its
folder's files), parallel coordinates from the swept parameters to the objective, the reward-KL frontier with each
point's name and numbers on hover, training curves for the points ticked in the table (the best 5 at first), and for
one point (clicked, or opened as summary.html#point=<folder name>) its held-out prompts with the reference's and the
trained model's answers side by side with their scores (samples.jsonl).

The data is one JSON blob: numbers rounded to 5 significant digits, curves subsampled to `CURVE_POINTS` steps,
repeated strings (prompts, the reference's answers) stored once, answers cut at `ANSWER_CHARS`, the answers of the
best `SAMPLES_FOR` points embedded (the others link to their samples.jsonl).

What made the page slow at 1,000 points, measured (chromium's trace, main-thread CPU time): laying out the table
(~0.6 s: every cell of a classic table is measured to size the columns), then running Plotly's 4.8 MB script (~0.8 s)
and drawing the plots (~0.7 s), all before anything showed. So the page comes in two steps: first the table, whose
rows are fixed-width grids laid out only when on screen (page.css, content-visibility), and a point's answers, which
need no Plotly; then, after that first paint, Plotly's script (inlined as a non-executed <script type="text/plain">,
still no network) and each plot in a task of its own. page.js sets `data-usable-ms` on <body> once the table is
painted and `data-ready-ms` once every plot is drawn too; `make bench-report` reads both in real time (cdp.py).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from dpo_sweeps.report.points import CURVE_PANELS, METRIC_COLUMNS, swept_params
from dpo_sweeps.runs import folder as run_folder
from dpo_sweeps.runs.reading import RunRecord, finite, number

SUMMARY_HTML = "summary.html"
CURVE_POINTS = 40
ANSWER_CHARS = 600
PROMPTS_PER_POINT = 8
SAMPLES_FOR = 1000
# Columns of the table besides the objective (when the points have them).
TABLE_METRICS = (
    "eval_rewards/accuracies",
    "eval_rewards/margins",
    "eval_loss",
    "gen/score_after",
    "gen/win_rate_vs_ref",
    "gen/kl_to_ref",
    "gen/logratio_to_ref",
    "train_runtime",
)
FILES = (
    run_folder.STATUS_FILE,
    run_folder.METRICS_FILE,
    run_folder.HISTORY_FILE,
    run_folder.SAMPLES_FILE,
    run_folder.CONFIG_FILE,
    run_folder.MODEL_CARD_FILE,
)


def _round(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.5g}")


class _Strings:
    """A string table: each distinct text stored once, referred to by index."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.index: dict[str, int] = {}

    def __call__(self, text: Any) -> int:
        text = str(text or "")
        if len(text) > ANSWER_CHARS:
            text = text[:ANSWER_CHARS] + " [...]"
        if text not in self.index:
            self.index[text] = len(self.items)
            self.items.append(text)
        return self.index[text]


def _curves(point: RunRecord) -> dict[str, list[list[float]]]:
    out = {}
    for key, _ in CURVE_PANELS:
        xy = sorted(
            (r["step"], number(r.get(key))) for r in point.history if "step" in r and finite(number(r.get(key)))
        )
        if len(xy) > CURVE_POINTS:  # evenly spaced, the last step kept
            stride = len(xy) / CURVE_POINTS
            xy = [xy[int(i * stride)] for i in range(CURVE_POINTS - 1)] + [xy[-1]]
        if xy:
            out[key] = [[x for x, _ in xy], [_round(y) for _, y in xy]]
    return out


def _samples(point: RunRecord, strings: _Strings) -> list[list[Any]] | None:
    """[prompt, reference answer, trained answer, reference score, trained score] (string-table indices)."""
    path = point.path / run_folder.SAMPLES_FILE
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    rows = []
    for line in lines[:PROMPTS_PER_POINT]:
        try:
            s = json.loads(line)
        except ValueError:
            continue
        if isinstance(s, dict):
            rows.append([strings(s.get("prompt")), strings(s.get("reference")), strings(s.get("policy")),
                         _round(number(s.get("reference_score"))), _round(number(s.get("policy_score")))])  # fmt: skip
    return rows


def page_data(sweep_dir: Path, points: list[RunRecord], metric: str, mode: str) -> dict[str, Any]:
    """Everything the page shows, `points` in the report's order (best first)."""
    swept, fixed = swept_params(points)
    columns = [metric] + [k for k in TABLE_METRICS if k != metric and any(finite(p.value(k)) for p in points)]
    strings = _Strings()
    rows, rank = [], 0
    for i, p in enumerate(points):
        ranked = finite(p.value(metric))
        rank += ranked
        files = [name for name in FILES if (p.path / name).exists()]
        rows.append({
            "name": p.name,
            "state": p.state,
            "rank": rank if ranked else None,
            "params": {k: p.overrides.get(k) for k in swept},
            "values": [_round(p.value(k)) for k in columns],
            "se": [_round(p.value(f"{k}_se")) for k in columns],
            "error": (p.error or "").strip().splitlines()[-1][:300] if p.error else "",
            "files": files,
            "curves": _curves(p),
            "samples": _samples(p, strings) if i < SAMPLES_FOR and run_folder.SAMPLES_FILE in files else None,
        })  # fmt: skip
    return {
        "sweep": sweep_dir.name,
        "metric": metric,
        "mode": mode,
        "swept": swept,
        "numeric": {k: all(finite(number(r["params"][k])) for r in rows if r["params"][k] is not None) for k in swept},
        "fixed": fixed,
        "columns": columns,
        "labels": {k: METRIC_COLUMNS.get(k, k) for k in columns},
        "curve_keys": [[k, title] for k, title in CURVE_PANELS],
        "strings": strings.items,
        "samples_for": SAMPLES_FOR,
        "points": rows,
    }


def render(data: dict[str, Any]) -> str:
    """The page: Plotly's script, ours (page.js) and the data, inlined."""
    from plotly.offline import get_plotlyjs

    here = Path(__file__).parent
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    title = html.escape(f"Sweep {data['sweep']}")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width'><title>{title}</title>"
        f"<style>{(here / 'page.css').read_text()}</style>"
        "</head>\n<body>"
        f"<script type='application/json' id='data'>{blob}</script>\n"
        f"{(here / 'page.html').read_text()}"
        # Not run by the parser: page.js runs it once the table is up (a type the browser does not execute).
        f"<script type='text/plain' id='plotly-src'>{get_plotlyjs()}</script>\n"
        f"<script>{(here / 'page.js').read_text()}</script></body></html>\n"
    )


def write_page(sweep_dir: Path, points: list[RunRecord], metric: str, mode: str) -> Path:
    path = sweep_dir / SUMMARY_HTML
    run_folder.write_text_atomic(path, render(page_data(sweep_dir, points, metric, mode)))
    return path
