"""Tiny inline-SVG charts: no plotting library, no script and no network, so a report is one
file that renders anywhere (every label passes through ``html.escape``)."""
from __future__ import annotations

import math
from html import escape

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22"]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-2:
        m, e = f"{v:.1e}".split("e")
        return f"{m.rstrip('0').rstrip('.')}e{int(e)}"
    return f"{v:.4g}"


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _series(s) -> dict:
    """A series as a dict: ``label, x, y`` and optional ``err`` (half-width), ``dashed``,
    ``markers_only``, ``color``; tuples ``(label, xs, ys[, err])`` are accepted too."""
    if isinstance(s, dict):
        return {"err": None, "dashed": False, "markers_only": False, "color": None, **s}
    return {"label": s[0], "x": s[1], "y": s[2], "err": s[3] if len(s) > 3 else None, "dashed": False,
            "markers_only": False, "color": None}


def line_chart(series, *, title: str, xlabel: str, ylabel: str, hlines=(), logx: bool | int = False,
               width: int = 560, height: int = 340, markers_only: bool = False, highlight=None) -> str:
    """Lines (or markers) with optional error bars.

    ``series``: ``(label, xs, ys[, err])`` tuples or dicts (see :func:`_series`); ``hlines``:
    ``(label, y)`` dashed reference lines; ``logx``: ``True`` for a log2 axis ticked at the
    data (time steps), ``10`` for a log10 axis ticked at decades; ``highlight``: points
    ``(x, y)`` drawn as a connected front with rings (e.g. a Pareto front)."""
    ml, mr, mt, mb = 62, 190, 30, 46
    pw, ph = width - ml - mr, height - mt - mb
    ss = [_series(s) for s in series]
    for s in ss:  # drop points a log axis or a missing value cannot show
        keep = [i for i, (x, y) in enumerate(zip(s["x"], s["y"]))
                if _finite(x) and _finite(y) and (not logx or x > 0)]
        s["x"], s["y"] = [s["x"][i] for i in keep], [s["y"][i] for i in keep]
        s["err"] = [s["err"][i] if _finite(s["err"][i]) else 0.0 for i in keep] if s["err"] else None
    hlines = [(label, y) for label, y in hlines if _finite(y)]
    highlight = [(x, y) for x, y in (highlight or []) if _finite(x) and _finite(y) and (not logx or x > 0)]
    xs_all = [x for s in ss for x in s["x"]]
    ys_all = ([y - (e or 0) for s in ss for y, e in zip(s["y"], s["err"] or [0] * len(s["y"]))]
              + [y + (e or 0) for s in ss for y, e in zip(s["y"], s["err"] or [0] * len(s["y"]))]
              + [y for _, y in hlines])
    if not xs_all:
        xs_all = [1, 2]
    if not ys_all:
        ys_all = [0, 1]
    if logx == 10:
        tx = math.log10
    elif logx:
        tx = math.log2
    else:
        tx = float
    xlo, xhi = tx(min(xs_all)), tx(max(xs_all))
    if xhi == xlo:
        xlo, xhi = xlo - 1, xhi + 1
    xpad = (xhi - xlo) * 0.04
    xlo, xhi = xlo - xpad, xhi + xpad
    ylo, yhi = min(ys_all), max(ys_all)
    pad = (yhi - ylo) * 0.08 or 0.05
    ylo, yhi = ylo - pad, yhi + pad

    def X(v):
        return ml + (tx(v) - xlo) / (xhi - xlo) * pw

    def Y(v):
        return mt + (1 - (v - ylo) / (yhi - ylo)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" class="chart" role="img" aria-label="{escape(title)}">',
           f'<title>{escape(title)}</title>',
           f'<text x="{ml}" y="18" class="title">{escape(title)}</text>',
           f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for v in _ticks(ylo, yhi):
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#eee"/>'
                   f'<text x="{ml - 4}" y="{Y(v) + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
    if logx == 10:
        decades = range(math.floor(xlo), math.ceil(xhi) + 1)
        xt = [10 ** k for k in decades if xlo <= k <= xhi]
        if len(xt) < 3:  # a short range: 1-2-5 ticks
            xt = [m * 10 ** k for k in decades for m in (1, 2, 5) if xlo <= math.log10(m * 10 ** k) <= xhi]
        if len(xt) < 2:
            xt = sorted({min(xs_all), max(xs_all)})
    elif logx:
        xt = sorted(set(xs_all))
        if len(xt) > 10:
            xt = [2 ** k for k in range(math.ceil(xlo), math.floor(xhi) + 1, max(1, int((xhi - xlo) // 8)))]
    else:
        xt = _ticks(xlo, xhi)
    last = -math.inf
    for v in sorted(xt):
        if X(v) - last < 42:  # keep labels from overlapping
            continue
        last = X(v)
        out.append(f'<line x1="{X(v):.1f}" x2="{X(v):.1f}" y1="{mt + ph}" y2="{mt + ph + 4}" stroke="#999"/>'
                   f'<text x="{X(v):.1f}" y="{mt + ph + 16}" text-anchor="middle">{_fmt(v)}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{height - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text transform="translate(14,{mt + ph / 2}) rotate(-90)" text-anchor="middle">{escape(ylabel)}</text>')
    legend_y = mt + 6
    lx = ml + pw + 10
    for i, (label, y) in enumerate(hlines):
        c = PALETTE[(len(ss) + i) % len(PALETTE)]
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(y):.1f}" y2="{Y(y):.1f}" stroke="{c}" '
                   f'stroke-width="1.5" stroke-dasharray="6 4"><title>{escape(label)}: {y:.4f}</title></line>')
        out.append(f'<line x1="{lx}" x2="{lx + 18}" y1="{legend_y}" y2="{legend_y}" stroke="{c}" stroke-dasharray="6 4"/>'
                   f'<text x="{lx + 22}" y="{legend_y + 4}">{escape(label)}</text>')
        legend_y += 16
    if highlight:
        front = sorted(highlight)
        pts = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in front)
        out.append(f'<polyline class="front" points="{pts}" fill="none" stroke="#000" stroke-width="1.2" '
                   f'stroke-dasharray="3 3"/>')
        for x, y in front:
            out.append(f'<circle class="front" cx="{X(x):.1f}" cy="{Y(y):.1f}" r="7" fill="none" stroke="#000"/>')
        out.append(f'<circle cx="{lx + 9}" cy="{legend_y}" r="6" fill="none" stroke="#000"/>'
                   f'<text x="{lx + 22}" y="{legend_y + 4}">Pareto front</text>')
        legend_y += 16
    for i, s in enumerate(ss):
        c = s["color"] or PALETTE[i % len(PALETTE)]
        dash = ' stroke-dasharray="7 4"' if s["dashed"] else ""
        pairs = sorted(zip(s["x"], s["y"], s["err"] or [0.0] * len(s["x"])))
        if not (markers_only or s["markers_only"]) and len(pairs) > 1:
            pts = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y, _ in pairs)
            out.append(f'<polyline class="series" points="{pts}" fill="none" stroke="{c}" stroke-width="2"{dash}/>')
        for x, y, e in pairs:
            if e:
                out.append(f'<line x1="{X(x):.1f}" x2="{X(x):.1f}" y1="{Y(y - e):.1f}" y2="{Y(y + e):.1f}" stroke="{c}"/>'
                           f'<line x1="{X(x) - 3:.1f}" x2="{X(x) + 3:.1f}" y1="{Y(y - e):.1f}" y2="{Y(y - e):.1f}" stroke="{c}"/>'
                           f'<line x1="{X(x) - 3:.1f}" x2="{X(x) + 3:.1f}" y1="{Y(y + e):.1f}" y2="{Y(y + e):.1f}" stroke="{c}"/>')
            shape = (f'<rect class="point" x="{X(x) - 3.5:.1f}" y="{Y(y) - 3.5:.1f}" width="7" height="7" fill="{c}">'
                     if s["dashed"] else f'<circle class="point" cx="{X(x):.1f}" cy="{Y(y):.1f}" r="3.5" fill="{c}">')
            err = f" ± {e:.4f}" if e else ""
            out.append(f'{shape}<title>{escape(str(s["label"]))}: x={_fmt(x)}, y={y:.4f}{err}</title>'
                       f'{"</rect>" if s["dashed"] else "</circle>"}')
        out.append(f'<line x1="{lx}" x2="{lx + 18}" y1="{legend_y}" y2="{legend_y}" stroke="{c}" stroke-width="2"{dash}/>'
                   f'<circle cx="{lx + 9}" cy="{legend_y}" r="3.5" fill="{c}"/>'
                   f'<text x="{lx + 22}" y="{legend_y + 4}">{escape(_short(str(s["label"])))}'
                   f'<title>{escape(str(s["label"]))}</title></text>')
        legend_y += 16
    out.append("</svg>")
    return "\n".join(out)


def _short(text: str, n: int = 26) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def bar_chart(categories, series, *, title: str, ylabel: str, xlabel: str = "", width: int = 560,
              height: int = 320, ymax: float | None = None, tooltips=None) -> str:
    """Grouped bars: ``categories`` along x, one bar per ``(label, values)`` in ``series``
    (``values[i]`` for ``categories[i]``; None leaves a gap). ``tooltips[(s, i)]`` adds a hover text."""
    ml, mr, mt, mb = 62, 190, 30, 58
    pw, ph = width - ml - mr, height - mt - mb
    vals = [v for _, vs in series for v in vs if _finite(v)]
    top = ymax if ymax is not None else (max(vals) * 1.1 if vals and max(vals) > 0 else 1.0)

    def Y(v):
        return mt + (1 - v / top) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" class="chart" role="img" aria-label="{escape(title)}">',
           f'<title>{escape(title)}</title>',
           f'<text x="{ml}" y="18" class="title">{escape(title)}</text>',
           f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for v in _ticks(0.0, top):
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#eee"/>'
                   f'<text x="{ml - 4}" y="{Y(v) + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
    n_cat, n_ser = max(len(categories), 1), max(len(series), 1)
    group = pw / n_cat
    bw = group * 0.8 / n_ser
    for i, cat in enumerate(categories):
        cx = ml + group * (i + 0.5)
        out.append(f'<text x="{cx:.1f}" y="{mt + ph + 16}" text-anchor="middle">{escape(_short(str(cat), 14))}'
                   f'<title>{escape(str(cat))}</title></text>')
    for j, (label, values) in enumerate(series):
        c = PALETTE[j % len(PALETTE)]
        for i, v in enumerate(values):
            if not _finite(v):
                continue
            x = ml + group * i + group * 0.1 + bw * j
            tip = (tooltips or {}).get((j, i), "")
            out.append(f'<rect class="bar" x="{x:.1f}" y="{Y(v):.1f}" width="{max(bw - 1, 1):.1f}" '
                       f'height="{max(Y(0) - Y(v), 0):.1f}" fill="{c}"><title>{escape(str(label))}, '
                       f'{escape(str(categories[i]))}: {v:.4g}{escape(tip)}</title></rect>')
        ly = mt + 6 + 16 * j
        out.append(f'<rect x="{ml + pw + 10}" y="{ly - 5}" width="12" height="10" fill="{c}"/>'
                   f'<text x="{ml + pw + 28}" y="{ly + 4}">{escape(_short(str(label)))}'
                   f'<title>{escape(str(label))}</title></text>')
    if xlabel:
        out.append(f'<text x="{ml + pw / 2}" y="{height - 10}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text transform="translate(14,{mt + ph / 2}) rotate(-90)" text-anchor="middle">{escape(ylabel)}</text>')
    out.append("</svg>")
    return "\n".join(out)
