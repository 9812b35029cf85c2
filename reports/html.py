"""The HTML comparison report: one self-contained file computed from result rows only."""
from __future__ import annotations

import json
import math
import os
import tempfile
from datetime import datetime, timezone
from html import escape
from pathlib import Path

import pandas as pd

from suite.reports.svg import line_chart
from suite.results import read_frame

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right} th{background:#f4f4f4}
td.l,th.l{text-align:left} .chart text{font-size:11px;font-family:sans-serif} .chart .title{font-size:13px;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:12px} .bad{color:#b00} code{background:#f4f4f4;padding:1px 3px}
"""


def _ci95(values: pd.Series) -> float:
    v = values.dropna()
    if len(v) < 2:
        return 0.0
    # Student t quantiles for small n (two-sided 95 %); n > 30 uses 1.96
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}.get(len(v), 1.96 if len(v) > 30 else 2.1)
    return float(t * v.std(ddof=1) / math.sqrt(len(v)))


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[df["status"] == "ok"].copy()
    if ok.empty:
        return pd.DataFrame()
    ok["Tkey"] = ok["T"].fillna(-1)
    g = ok.groupby(["dataset", "rule", "arch", "backend", "Tkey"], dropna=False)
    out = g.agg(seeds=("seed", "nunique"), acc_mean=("accuracy", "mean"), synops=("synops", "mean"),
                macs=("macs", "mean"), energy_pj=("energy_pj", "mean"), train_time_s=("train_time_s", "mean"),
                samples_per_s=("samples_per_s", "mean")).reset_index()
    out["acc_ci95"] = [_ci95(grp["accuracy"]) for _, grp in g]
    out["T"] = out["Tkey"].where(out["Tkey"] >= 0, None)
    return out.drop(columns="Tkey")


def _table(df: pd.DataFrame, cols: list[str], fmt: dict | None = None) -> str:
    fmt = fmt or {}
    head = "".join(f'<th class="{"l" if df[c].dtype == object else ""}">{escape(str(c))}</th>' for c in cols)
    body = []
    for _, row in df.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
                s = ""
            elif c in fmt:
                s = fmt[c](v)
            elif isinstance(v, float):
                s = f"{v:.4g}"
            else:
                s = str(v)
            cls = "l" if not isinstance(v, (int, float)) or isinstance(v, bool) else ""
            cells.append(f'<td class="{cls}">{escape(s)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render(df: pd.DataFrame, sources: list[str], runs: list[dict]) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>snn-suite comparison report</title>"
             f"<style>{CSS}</style></head><body>",
             "<h1>snn-suite comparison report</h1>",
             f"<p>{len(df)} rows from {len(sources)} result director{'y' if len(sources) == 1 else 'ies'}: "
             + ", ".join(f"<code>{escape(s)}</code>" for s in sources)
             + f". Generated {escape(datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}.</p>"]
    summ = summarise(df)
    parts.append("<h2>Accuracy against time steps</h2><div class='charts'>")
    if not summ.empty:
        for (dataset, arch), grp in summ.groupby(["dataset", "arch"]):
            series, hlines = [], []
            for (rule, backend), g in grp.groupby(["rule", "backend"]):
                label = rule if grp["backend"].nunique() == 1 else f"{rule} [{backend}]"
                g = g[g["T"].notna()]
                if not g.empty:
                    series.append((label, [float(t) for t in g["T"]], [float(a) for a in g["acc_mean"]],
                                   [float(e) for e in g["acc_ci95"]]))
            for rule, g in grp[grp["T"].isna()].groupby("rule"):
                hlines.append((f"{rule} (ANN)", float(g["acc_mean"].mean())))
            parts.append(line_chart(series, hlines=hlines, logx=True, title=f"{dataset} / {arch}",
                                    xlabel="time steps T", ylabel="test accuracy"))
    parts.append("</div>")
    parts.append("<h2>Summary: mean and 95 % CI over seeds</h2>")
    if not summ.empty:
        summ = summ.sort_values(["dataset", "arch", "rule", "T"], na_position="first")
        parts.append(_table(summ, ["dataset", "arch", "rule", "backend", "T", "seeds", "acc_mean", "acc_ci95",
                                   "synops", "macs", "energy_pj", "train_time_s", "samples_per_s"],
                            {"acc_mean": lambda v: f"{100 * v:.2f} %", "acc_ci95": lambda v: f"± {100 * v:.2f}",
                             "T": lambda v: f"{int(v)}", "seeds": lambda v: f"{int(v)}"}))
    else:
        parts.append("<p>No successful rows.</p>")
    bad = df[df["status"] != "ok"]
    if len(bad):
        parts.append("<h2 class='bad'>Cells that did not finish</h2>")
        bad = bad.assign(error=bad["error"].fillna("").astype(str).str.split("\n").str[0])
        parts.append(_table(bad, ["rule", "dataset", "arch", "seed", "T", "status", "error"]))
    parts.append("<h2>All rows</h2>")
    parts.append(_table(df, ["rule", "dataset", "arch", "encoding", "backend", "T", "seed", "status", "accuracy",
                             "synops", "macs", "energy_pj", "spikes_per_sample", "train_time_s", "epochs",
                             "plugin_version", "config_hash"],
                        {"T": lambda v: f"{int(v)}"}))
    parts.append("<h2>Papers</h2><ul>")
    for rule, paper in sorted(df.dropna(subset=["paper"]).groupby("rule")["paper"].first().items()):
        parts.append(f"<li><b>{escape(str(rule))}</b>: {escape(str(paper))}</li>")
    parts.append("</ul><h2>Commands and environment</h2><ul>")
    for run in runs:
        env = run.get("environment", {})
        parts.append(f"<li><code>{escape(str(run.get('command', '')))}</code><br><small>"
                     + escape(", ".join(f"{k}={v}" for k, v in env.items())) + "</small></li>")
    parts.append("</ul></body></html>")
    return "\n".join(parts)


def write_report(dirs: list[Path], output: Path) -> Path:
    df = read_frame(*dirs)
    runs = []
    for d in dirs:
        f = Path(d) / "runs.jsonl"
        if f.is_file():
            runs += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    html = render(df, [str(d) for d in dirs], runs)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, suffix=".html")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(html)
    os.replace(tmp, output)
    return output
