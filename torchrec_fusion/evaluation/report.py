"""A run's report: PNG figures of its curves under ``OUT/report/`` and an ``OUT/report.md`` linking them."""

import functools
import logging
import math
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

logger = logging.getLogger(__name__)

FIGURES = ("loss.png", "metrics.png", "gates.png", "task_weights.png", "fusion_weights.png", "importance.png",
           "experts.png")
Series = Dict[str, List[float]]


def _dict(x: Any) -> Dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _list(x: Any) -> List[Any]:
    return list(x) if isinstance(x, (list, tuple)) else []


def _num(x: Any) -> float:
    """``x`` as a float for plotting: NaN for infinities and for anything that is not a number."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return math.nan if math.isinf(v) else v


def _metrics(m: Any) -> Dict[str, float]:
    """The float metrics of ``m``; counts, flags, strings and nested dicts are left out."""
    return {k: v for k, v in _dict(m).items() if isinstance(v, float)}


def _by_epoch(history: List[Dict[str, Any]], get: Callable[[Dict[str, Any]], Any]) -> Series:
    """``name -> value per epoch`` of the dict ``get(entry)``; NaN where an epoch lacks the name."""
    out: Series = {}
    for i, entry in enumerate(history):
        for name, v in _dict(get(entry)).items():
            out.setdefault(str(name), [math.nan] * len(history))[i] = _num(v)
    return out


def _smooth(y: Sequence[float], window: int) -> np.ndarray:
    """Centred moving average over ``window`` points that skips NaNs."""
    a = np.asarray(y, dtype=float)
    ok = np.isfinite(a)
    k = np.ones(max(1, min(window, len(a))))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.convolve(np.where(ok, a, 0.0), k, "same") / np.convolve(ok.astype(float), k, "same")


def _panels(n: int, cols: int = 3) -> List[Axes]:
    rows, cols = math.ceil(n / cols), min(n, cols)
    fig = Figure(figsize=(4.8 * cols, 3.6 * rows), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


def _figure(ax: Axes) -> Figure:
    """The figure an axes was drawn on."""
    fig = ax.get_figure(root=True)
    assert isinstance(fig, Figure)
    return fig


# a y axis starts at 0 unless the values' spread is below this share of the largest: it is then zoomed, and says so
ZOOM_BELOW = 0.2
# runs with at most this many evaluations are drawn as points (a line between 2 points suggests a trend)
POINTS_UP_TO = 3
_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))


def _y_axis(ax: Axes, values: Sequence[float]) -> None:
    """The y axis from 0 for non-negative values, unless that would flatten their differences: then
    the axis stays zoomed on them, marked in the title and the axis label."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not v.size or v.min() < 0:
        return
    lo, hi = float(v.min()), float(v.max())
    if hi == lo or hi - lo >= ZOOM_BELOW * hi:  # (a flat series has nothing to zoom on)
        ax.set_ylim(0, hi * 1.08 if hi > 0 else 1)
        return
    ax.set_title(ax.get_title() + " [zoomed]")
    ax.set_ylabel(f"{ax.get_ylabel()} (zoomed: axis not from 0)")


def _lines(ax: Axes, x: Sequence[float], series: Series, title: str, ylabel: str, xlabel: str = "epoch",
           y_range: Optional[Tuple[float, float]] = None, distinct: bool = False) -> None:
    """One line per series over ``x`` (points only for short runs); the y axis from :func:`_y_axis` or
    ``y_range``. ``distinct``: each series its own dash and marker, drawn thinner in turn, so that
    equal series (fixed task weights) stay visible on top of each other."""
    short = 0 < len(x) <= POINTS_UP_TO
    for i, (name, y) in enumerate(series.items()):
        dash, mark = _STYLES[i % len(_STYLES)] if distinct else ("-", "o")
        shrink = 0.6 ** i if distinct else 1.0
        ax.plot(x, y, ls="none" if short else dash, marker=mark if len(x) < 30 else None, label=name,
                lw=2.5 * shrink + 0.5, ms=(9 if short else 6) * shrink + 3, alpha=0.9)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if short:  # a little room either side of the few points
        ax.set_xlim(min(x) - 0.5, max(x) + 0.5)
    ax.grid(alpha=0.3)
    if y_range is not None:
        ax.set_ylim(*y_range)
    else:
        _y_axis(ax, [v for y in series.values() for v in y])
    if series:
        ax.legend(fontsize="small")


def _steps(ax: Axes, series: Series, title: str, marks: Sequence[float]) -> None:
    """Raw (faint) and smoothed step curves, with dotted lines after the steps in ``marks`` (evaluations)."""
    for name, y in series.items():
        w = max(1, min(50, len(y) // 10))
        raw = ax.plot(range(1, len(y) + 1), y, alpha=0.3, lw=0.8)[0]
        ax.plot(range(1, len(y) + 1), _smooth(y, w), color=raw.get_color(), lw=2, label=f"{name} (avg of {w})")
    for m in marks:
        ax.axvline(m + 0.5, color="grey", ls=":", lw=1)
    _lines(ax, [], {}, title, "loss", "step")
    _y_axis(ax, [v for y in series.values() for v in y])
    ax.legend(fontsize="small")


def _weights_figure(series: Series, x: List[float], title: str) -> Optional[Figure]:
    """Weights per epoch, each series in its own style (equal weights overlap); the title says when
    every series is the same."""
    if not series:
        return None
    ax = _panels(1)[0]
    values = list(series.values())
    same = len(values) > 1 and all(np.allclose(v, values[0], equal_nan=True) for v in values[1:])
    _lines(ax, x, series, title + (" (all equal)" if same else ""), "weight", distinct=True)
    return _figure(ax)


def _loss_figure(result: Mapping[str, Any], history: List[Dict[str, Any]], x: List[float]) -> Optional[Figure]:
    steps = [_num(v) for v in _list(result.get("step_losses"))]
    per_task = {str(t): [_num(v) for v in _list(ls)] for t, ls in _dict(result.get("step_task_losses")).items()}
    per_task = {t: ls for t, ls in per_task.items() if ls}
    marks = [e["step"] for e in history[:-1] if isinstance(e.get("step"), int)]  # evaluated after these steps
    if not marks and len(history) > 1 and len(steps) % len(history) == 0:  # older results: even epochs
        marks = [i * len(steps) // len(history) for i in range(1, len(history))]
    draw: List[Callable[[Axes], None]] = []
    if steps:
        draw.append(lambda ax: _steps(ax, {"train loss": steps}, "training loss per step", marks))
    if per_task:
        draw.append(lambda ax: _steps(ax, per_task, "task losses per step", marks))
    if history:
        epoch_loss = {"train loss": [_num(e.get("train_loss")) for e in history]}
        draw.append(lambda ax: _lines(ax, x, epoch_loss, "mean training loss per epoch", "loss"))
    axes = _panels(len(draw)) if draw else []
    for ax, d in zip(axes, draw):
        d(ax)
    return _figure(axes[0]) if axes else None


def _metric_of(scored: Callable[[Dict[str, Any]], Dict[str, Any]], kind: str, e: Dict[str, Any]) -> Dict[str, Any]:
    """Metric ``kind`` of every task scored in history entry ``e``."""
    return {t: m[kind] for t, m in scored(e).items() if kind in _metrics(m)}


def _metrics_figure(history: List[Dict[str, Any]], x: List[float]) -> Optional[Figure]:
    def scored(e: Dict[str, Any]) -> Dict[str, Any]:
        return {**_dict(e.get("tasks")), **({"fused": e["fused"]} if _dict(e.get("fused")) else {})}

    kinds = list(dict.fromkeys(k for e in history for m in scored(e).values() for k in _metrics(m)))
    if not kinds:
        return None
    axes = _panels(len(kinds))
    for ax, k in zip(axes, kinds):
        series = _by_epoch(history, functools.partial(_metric_of, scored, k))
        _lines(ax, x, series, k, k)
    return _figure(axes[0])


def _gates_figure(history: List[Dict[str, Any]], x: List[float]) -> Optional[Figure]:
    at = next((i for i in reversed(range(len(history))) if _dict(history[i].get("gates"))), None)
    if at is None:
        return None
    last = {str(t): _dict(g) for t, g in history[at]["gates"].items()}
    tasks, n = list(last), max(len(_list(g.get("mean_weight"))) for g in last.values())
    if n == 0:
        return None
    grid = np.full((len(tasks), n), np.nan)
    for i, t in enumerate(tasks):
        w = [_num(v) for v in _list(last[t].get("mean_weight"))]
        grid[i, :len(w)] = w
    cols, rows = min(len(tasks), 4), math.ceil(len(tasks) / 4)  # evolution panels: 4 a row
    fig = Figure(figsize=(max(7.0, 4.0 * cols), 1.0 + 0.5 * len(tasks) + 3.2 * rows), layout="constrained")
    gs = fig.add_gridspec(1 + rows, cols, height_ratios=[0.6 + 0.4 * len(tasks)] + [3] * rows)
    ax = fig.add_subplot(gs[0, :])
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black")
    labels = [f"{t} (H={_num(last[t].get('normalised_entropy')):.2f})"
              + (" COLLAPSED" if last[t].get("collapsed") is True else "") for t in tasks]
    ax.set_yticks(range(len(tasks)), labels)
    ax.set_xticks(range(n), [f"expert {j}" for j in range(n)])
    ax.set_title(f"mean gate weight per expert, epoch {x[at]:g} (H: normalised entropy)")
    fig.colorbar(im, ax=ax, label="weight")
    for i, t in enumerate(tasks):
        ax = fig.add_subplot(gs[1 + i // cols, i % cols])
        per_epoch = [[_num(v) for v in _list(_dict(_dict(e.get("gates")).get(t)).get("mean_weight"))] for e in history]
        series = {f"expert {j}": [w[j] if j < len(w) else math.nan for w in per_epoch] for j in range(n)}
        _lines(ax, x, series, t + (" (collapsed)" if last[t].get("collapsed") is True else ""), "mean gate weight",
               y_range=(0, 1))
        hit = [(xe, max(w)) for xe, w, e in zip(x, per_epoch, history)
               if w and _dict(_dict(e.get("gates")).get(t)).get("collapsed") is True]
        if hit:
            xs, ys = zip(*hit)
            ax.scatter(xs, ys, s=150, facecolors="none", edgecolors="red", zorder=3, label="collapsed")
            ax.legend(fontsize="small")
    return fig


def _importance_figure(explain: Dict[str, Any]) -> Optional[Figure]:
    """Per score, each feature's mean |attribution| (largest on top); with a fusion, each task's mean
    |contribution| to the fused score."""
    panels = {str(k): _dict(v) for k, v in _dict(explain.get("scores")).items() if _dict(v)}
    if _dict(explain.get("fusion")):
        panels["fused score, by task"] = _dict(explain["fusion"])
    if not panels:
        return None
    axes = _panels(len(panels))
    for ax, (name, values) in zip(axes, panels.items()):
        names = list(values)[::-1]
        ax.barh(range(len(names)), [_num(values[n]) for n in names], tick_label=names)
        ax.set(title=name, xlabel="mean |attribution|")
    return _figure(axes[0])


def _experts_figure(explain: Dict[str, Any]) -> Optional[Figure]:
    """Each task's mean gate weight on each expert, over the explained rows."""
    experts = {str(t): _dict(g) for t, g in _dict(explain.get("experts")).items() if _dict(g)}
    if not experts:
        return None
    tasks, cols = list(experts), list(dict.fromkeys(e for g in experts.values() for e in g))
    grid = np.array([[_num(experts[t].get(e)) for e in cols] for t in tasks])
    fig = Figure(figsize=(max(6.0, 1.2 * len(cols) + 2), 1.2 + 0.5 * len(tasks)), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black")
    ax.set(yticks=range(len(tasks)), yticklabels=tasks, xticks=range(len(cols)), xticklabels=cols,
           title=f"how much each task leans on each expert (mean gate weight, {explain.get('rows', '?')} rows)")
    fig.colorbar(im, ax=ax, label="weight")
    return fig


def _table(rows: Mapping[str, Any]) -> List[str]:
    """A markdown table of the float metrics of each row (``-`` where a row lacks one)."""
    cols = list(dict.fromkeys(k for m in rows.values() for k in _metrics(m)))
    if not cols:
        return []
    out = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in rows.items():
        m = _metrics(row)
        if _dict(row).get("baseline") is True:
            name = f"{name} (baseline)"
        out.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" if c in m else "-" for c in cols) + " |")
    return out + [""]


def _summary(result: Mapping[str, Any], x: List[float], cfg: Mapping[str, Any]) -> List[str]:
    """The report's text: title, facts, final metrics, plan and ranking tables."""
    arch = "ensemble " + "+".join(map(str, cfg["ensemble"])) if cfg.get("ensemble") else cfg.get("arch", "?")
    md = [f"# Run report: {arch}, balancing {cfg.get('balancing', '?')}, fusion {cfg.get('fusion', '?')}", ""]
    data, sps = _dict(result.get("data")), result.get("samples_per_second")
    facts = [("dataset", data.get("dataset", cfg.get("dataset"))), ("epochs", f"{x[-1]:g}" if x else None),
             ("steps", result.get("steps", len(_list(result.get("step_losses"))) or None)),
             ("evaluated on", result.get("eval_split")), ("world size", result.get("world_size")),
             ("throughput", f"{_num(sps):,.0f} samples/s" if isinstance(sps, (int, float)) else None),
             ("training time", f"{_num(result.get('train_seconds')):.1f} s" if "train_seconds" in result else None),
             ("checkpoint", result.get("checkpoint"))]
    md += [f"- {k}: {v}" for k, v in facts if v is not None] + [""]
    fused = _dict(result.get("fused"))
    final = {**_dict(result.get("tasks")), **({f"fused ({fused.get('method', '?')})": fused} if fused else {})}
    if table := _table(final):
        md += [f"## Final metrics ({result.get('eval_split', 'eval')})", ""] + table
    if isinstance(result.get("plan"), str) and result["plan"].strip():
        md += ["## Sharding plan", "", "```", result["plan"].rstrip(), "```", ""]
    if table := _table(_dict(result.get("ranking"))):
        md += ["## Ranking (full catalogue)", ""] + table
    return md


Draw = Callable[[], Optional[Figure]]


def _figures(result: Mapping[str, Any], history: List[Dict[str, Any]], x: List[float],
             cfg: Mapping[str, Any]) -> List[Tuple[str, Draw, str]]:
    """Each figure's file name, how to draw it, and its caption."""
    gates = {t: g for t, g in _dict(result.get("gates")).items() if _dict(g).get("collapsed") is True}
    explain = _dict(result.get("explain"))
    method = _dict(result.get("fused")).get("method", cfg.get("fusion", "?"))
    return [
        ("loss.png", lambda: _loss_figure(result, history, x),
         "Training loss per step (faint: raw, bold: moving average; dotted: evaluations) and mean per epoch. "
         "Look for the bold line falling, then flattening; a rise means too high a learning rate."),
        ("metrics.png", lambda: _metrics_figure(history, x),
         "Evaluation metrics per epoch, one line per task; axes start at 0 unless marked [zoomed]. Look for AUC "
         "rising and log-loss, RMSE and MAE falling; the epoch where one turns is where training should stop."),
        ("gates.png", lambda: _gates_figure(history, x),
         "Gate weights per expert: last epoch (top) and per epoch (bottom); circled: collapsed gate. Look for each "
         "task spreading its weight over several experts; one expert taking nearly all of it is a collapse. "
         + (f"Collapsed at the end: {', '.join(gates)}." if gates else "No gate collapsed at the end.")),
        ("task_weights.png", lambda: _weights_figure(_by_epoch(history, lambda e: e.get("task_weights")), x,
                                                     f"task loss weights ({cfg.get('balancing', '?')})"),
         "Loss weight of each task per epoch, as the balancing strategy set it (each task in its own style: equal "
         "weights lie on top of each other). Look for a task whose weight runs away from the others: that task "
         "dominates the shared layers."),
        ("fusion_weights.png", lambda: _weights_figure(
            _by_epoch(history, lambda e: _dict(e.get("fused")).get("weights")), x, f"fusion weights ({method})"),
         "Weight of each task score in the fused score, per epoch. Look for weights that settle: a score near "
         "weight 0 adds nothing to the fused ranking."),
        ("importance.png", lambda: _importance_figure(explain),
         f"What drives each task: mean |integrated gradients| of each feature over {explain.get('rows', '?')} rows of "
         f"the {explain.get('split', 'evaluation')} split (logit units for binary tasks, the task's own for "
         "regression; from the all-zero input). Look for the features a task relies on, and for tasks that rely on "
         "different ones."),
        ("experts.png", lambda: _experts_figure(explain),
         "Each task's mean gate weight per expert over the same rows. Look for tasks that share experts and for "
         "experts only one task uses."),
    ]


def _draw(fig_dir: str, figures: List[Tuple[str, Draw, str]]) -> List[str]:
    """Draws each figure into ``fig_dir``; returns the markdown of those drawn."""
    shown: List[str] = []
    for name, make, caption in figures:
        path = os.path.join(fig_dir, name)
        if os.path.exists(path):  # no stale figure from an earlier run in the same folder
            os.remove(path)
        try:
            fig = make()
            if fig is not None:
                fig.savefig(path, dpi=100)
                shown += [f"![{name[:-4]}](report/{name})", "", f"*{caption}*", ""]
        except Exception:  # a report never fails a finished run
            logger.warning("report: could not draw %s", name, exc_info=True)
            if os.path.exists(path):  # no half-written figure either
                os.remove(path)
    return shown


def write_report(result: Mapping[str, Any], output_dir: str) -> str:
    """Writes the figures of a training run to ``output_dir/report/`` and ``output_dir/report.md``.

    Sections and figures whose data the run lacks are left out; a figure that fails to draw
    is logged and left out, so odd results (NaNs, one epoch, missing keys) still give a report.

    Args:
        result: a run's ``metrics.json`` (``RunResult.to_dict()``), possibly read back from disk.
        output_dir: the run's output folder; created if missing.

    Returns:
        The path of ``report.md``.

    Example::

        import tempfile
        with tempfile.TemporaryDirectory() as out:
            epoch = {"epoch": 1, "train_loss": 0.6, "tasks": {"click": {"auc": 0.7, "logloss": 0.6}}}
            r = {"step_losses": [0.7, 0.6, 0.5], "history": [epoch], "tasks": epoch["tasks"]}
            assert os.path.exists(write_report(r, out))
    """
    result = _dict(result)
    history = [e for e in _list(result.get("history")) if isinstance(e, dict)]
    x = [v if math.isfinite(v := _num(e.get("epoch"))) else i + 1.0 for i, e in enumerate(history)]
    cfg, fig_dir = _dict(result.get("config")), os.path.join(output_dir, "report")
    os.makedirs(fig_dir, exist_ok=True)
    md = _summary(result, x, cfg)
    shown = _draw(fig_dir, _figures(result, history, x, cfg))
    if shown:
        md += ["## Figures", ""] + shown
    path = os.path.join(output_dir, "report.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(md).rstrip() + "\n")
    os.replace(path + ".tmp", path)
    return path


__all__ = ["write_report", "FIGURES"]
