"""Tiny inline-SVG charts: no plotting library and no network, so a report is one file."""
from __future__ import annotations

import math
from html import escape

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f"]


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
        return f"{v:.1e}"
    return f"{v:g}"


def line_chart(series, *, title: str, xlabel: str, ylabel: str, hlines=(), logx: bool = False,
               width: int = 560, height: int = 340, markers_only: bool = False, highlight=None) -> str:
    """``series``: list of ``(label, xs, ys)`` (optionally ``ys_err``); ``hlines``: ``(label, y)``.
    ``highlight``: list of (x, y) points drawn as a connected front (e.g. a Pareto front)."""
    ml, mr, mt, mb = 62, 170, 30, 46
    pw, ph = width - ml - mr, height - mt - mb
    xs_all = [x for s in series for x in s[1]]
    ys_all = [y for s in series for y in s[2]] + [y for _, y in hlines]
    if not xs_all:
        xs_all = [1, 2]
    if not ys_all:
        ys_all = [0, 1]
    tx = (lambda v: math.log2(v)) if logx else (lambda v: v)
    xlo, xhi = tx(min(xs_all)), tx(max(xs_all))
    if xhi == xlo:
        xlo, xhi = xlo - 1, xhi + 1
    ylo, yhi = min(ys_all), max(ys_all)
    pad = (yhi - ylo) * 0.08 or 0.05
    ylo, yhi = ylo - pad, yhi + pad
    X = lambda v: ml + (tx(v) - xlo) / (xhi - xlo) * pw
    Y = lambda v: mt + (1 - (v - ylo) / (yhi - ylo)) * ph
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart" role="img">',
           f'<text x="{ml}" y="18" class="title">{escape(title)}</text>',
           f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for v in _ticks(ylo, yhi):
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#eee"/>'
                   f'<text x="{ml - 4}" y="{Y(v) + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
    if logx:
        xt = sorted(set(xs_all))
        if len(xt) > 10:
            xt = [2 ** k for k in range(int(math.floor(xlo)), int(math.ceil(xhi)) + 1, max(1, int((xhi - xlo) // 8)))]
    else:
        xt = _ticks(xlo, xhi)
    for v in xt:
        out.append(f'<text x="{X(v):.1f}" y="{mt + ph + 16}" text-anchor="middle">{_fmt(v)}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{height - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text transform="translate(14,{mt + ph / 2}) rotate(-90)" text-anchor="middle">{escape(ylabel)}</text>')
    legend_y = mt + 6
    for i, (label, y) in enumerate(hlines):
        c = PALETTE[(len(series) + i) % len(PALETTE)]
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(y):.1f}" y2="{Y(y):.1f}" stroke="{c}" stroke-dasharray="6 4"/>')
        out.append(f'<line x1="{ml + pw + 10}" x2="{ml + pw + 28}" y1="{legend_y}" y2="{legend_y}" stroke="{c}" stroke-dasharray="6 4"/>'
                   f'<text x="{ml + pw + 32}" y="{legend_y + 4}">{escape(label)}</text>')
        legend_y += 16
    if highlight:
        pts = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in sorted(highlight))
        out.append(f'<polyline points="{pts}" fill="none" stroke="#000" stroke-width="1" stroke-dasharray="2 3"/>')
    for i, s in enumerate(series):
        label, xs, ys = s[0], s[1], s[2]
        err = s[3] if len(s) > 3 else None
        c = PALETTE[i % len(PALETTE)]
        pairs = sorted(zip(xs, ys, err or [0] * len(xs)))
        if not markers_only and len(pairs) > 1:
            pts = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y, _ in pairs)
            out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
        for x, y, e in pairs:
            if e:
                out.append(f'<line x1="{X(x):.1f}" x2="{X(x):.1f}" y1="{Y(y - e):.1f}" y2="{Y(y + e):.1f}" stroke="{c}"/>')
            out.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="3" fill="{c}"><title>{escape(label)}: '
                       f'{_fmt(x)}, {y:.4f}</title></circle>')
        out.append(f'<circle cx="{ml + pw + 19}" cy="{legend_y}" r="4" fill="{c}"/>'
                   f'<text x="{ml + pw + 32}" y="{legend_y + 4}">{escape(label)}</text>')
        legend_y += 16
    out.append("</svg>")
    return "\n".join(out)
