"""The HTML comparison report: one self-contained file computed from result rows only.

``write_report(dirs, output)`` reads any number of result directories (``DIR/cells/*.jsonl``
and ``DIR/runs.jsonl``), merges them, and writes one HTML file with inline SVG charts: no
script, no stylesheet or font from elsewhere, nothing fetched. Sections: accuracy against T
per dataset and architecture (the CNN as a dashed reference line, conversion dashed), accuracy
against depth where rows carry one (the resnet family's ``extra.arch_spec``), accuracy
against operations and against energy with the Pareto front ringed, per-layer spike rates,
mean ± 95 % CI over seeds, training time and throughput, failed cells, papers, and the command
and environment of every run. Every string from a plugin or a row is escaped.

A cell found in more than one directory (the same ``cell_id``: results copied between
machines) counts once, the most recently finished copy.
"""
from __future__ import annotations

import base64
import gzip
import json
import math
import re
from datetime import datetime, timezone
from html import escape
from pathlib import Path

import pandas as pd

from suite.opcount import energy_model
from suite.reports.svg import bar_chart, line_chart
from suite.results import COLUMNS, read_frame, write_atomic
from suite.stats import ci95  # noqa: F401  (re-exported: the report's interval)

#: rules drawn as references rather than as learning rules (besides every rule without T)
REFERENCE_RULES = {"cnn", "ann2snn"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;color:#222;max-width:1240px;padding:0 16px}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd} h3{font-size:1.02em;margin:1.2em 0 .3em}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;vertical-align:top} th{background:#f4f4f4}
td.l,th.l{text-align:left} .chart text{font-size:11px;font-family:sans-serif} .chart .title{font-size:13px;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:12px} .bad{color:#b00} code{background:#f4f4f4;padding:1px 3px;word-break:break-all}
.note{color:#555;font-size:13px} nav a{margin-right:12px} details{margin:8px 0} .front{font-weight:600}
"""


# ----------------------------------------------------------------------------- statistics
def _ci95(values: pd.Series) -> float:
    return ci95(values)


def _num(df: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(df[col], errors="coerce") if col in df else pd.Series(float("nan"), index=df.index)


def _extra(row, key, default=None):
    e = row.get("extra") if isinstance(row, dict) else row["extra"]
    return e.get(key, default) if isinstance(e, dict) else default


def deduplicate(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep one row per (cell_id, T): the most recently finished copy."""
    if df.empty or df["cell_id"].isna().all():
        return df, 0
    key = [f"{c}|{'' if pd.isna(t) else int(t)}" for c, t in zip(df["cell_id"], df["T"])]
    order = df.assign(_k=key, _f=df["finished_at"].astype(str)).sort_values("_f", kind="stable")
    keep = order[~order["_k"].duplicated(keep="last") | order["cell_id"].isna()]
    dropped = len(df) - len(keep)
    return df.loc[sorted(keep.index)].reset_index(drop=True), dropped


def apply_energy(df: pd.DataFrame, spec) -> pd.DataFrame:
    """Recompute ``energy_pj`` of every row with another energy model (from its MACs, SynOps
    and neuron updates)."""
    em = energy_model(spec)
    df = df.copy()
    upd = pd.to_numeric(pd.Series([_extra(r, "neuron_updates", 0.0) or 0.0 for _, r in df.iterrows()],
                                  index=df.index), errors="coerce").fillna(0.0)
    df["energy_pj"] = em.mac_pj * _num(df, "macs").fillna(0) + em.ac_pj * _num(df, "synops").fillna(0) \
        + em.neuron_pj * upd
    return df


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95 % CI over seeds per (dataset, arch, rule, backend, T)."""
    ok = df[df["status"] == "ok"].copy()
    if ok.empty:
        return pd.DataFrame()
    ok["Tkey"] = pd.to_numeric(ok["T"], errors="coerce").fillna(-1)
    for c in ("accuracy", "synops", "macs", "energy_pj", "spikes_per_sample", "train_time_s", "samples_per_s",
              "peak_mem_mb"):
        ok[c] = _num(ok, c)
    ok["ops"] = ok["synops"].fillna(0) + ok["macs"].fillna(0)
    keys = ["dataset", "arch", "rule", "backend", "Tkey"]
    g = ok.groupby(keys, dropna=False, sort=True)
    out = g.agg(seeds=("seed", "nunique"), acc_mean=("accuracy", "mean"), synops=("synops", "mean"),
                macs=("macs", "mean"), ops=("ops", "mean"), energy_pj=("energy_pj", "mean"),
                spikes_per_sample=("spikes_per_sample", "mean"), train_time_s=("train_time_s", "mean"),
                samples_per_s=("samples_per_s", "mean"), peak_mem_mb=("peak_mem_mb", "mean")).reset_index()
    cis = {c: [ci95(grp[c]) for _, grp in g] for c in ("accuracy", "synops", "energy_pj", "train_time_s",
                                                         "samples_per_s")}
    out["acc_ci95"] = cis["accuracy"]
    out["synops_ci95"], out["energy_ci95"] = cis["synops"], cis["energy_pj"]
    out["time_ci95"], out["tput_ci95"] = cis["train_time_s"], cis["samples_per_s"]
    out["T"] = out["Tkey"].where(out["Tkey"] >= 0, None)
    return out.drop(columns="Tkey")


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points ``(cost, accuracy)`` not dominated by another (no cheaper-or-equal point is at
    least as accurate while strictly better in one of the two)."""
    front, best = [], -math.inf
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((cost, acc))
            best = acc
    return front


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(name))]


# ----------------------------------------------------------------------------- HTML pieces
def _fmt_cell(v, fmt=None) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return ""
    if fmt is not None:
        return fmt(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(df: pd.DataFrame, cols: list[str], fmt: dict | None = None, headers: dict | None = None,
           row_class=None, cell_fmt: dict | None = None) -> str:
    """``fmt``: column -> value formatter; ``cell_fmt``: column -> formatter of the whole row."""
    fmt, headers, cell_fmt = fmt or {}, headers or {}, cell_fmt or {}
    head = "".join(f'<th class="{"" if pd.api.types.is_numeric_dtype(df[c]) or c in fmt else "l"}">'
                   f'{escape(str(headers.get(c, c)))}</th>' for c in cols)
    body = []
    for _, row in df.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            s = cell_fmt[c](row) if c in cell_fmt else _fmt_cell(v, fmt.get(c) if _fmt_cell(v) else None)
            numeric = isinstance(v, (int, float)) and not isinstance(v, bool) or c in fmt
            cells.append(f'<td class="{"" if numeric else "l"}">{escape(s)}</td>')
        cls = f' class="{row_class(row)}"' if row_class and row_class(row) else ""
        body.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _pm(mean_col, ci_col, scale=1.0, digits=2, unit=""):
    def f(row):
        m, e = row[mean_col], row[ci_col]
        if m is None or (isinstance(m, float) and math.isnan(m)):
            return ""
        s = f"{scale * m:.{digits}f}{unit}"
        return s + (f" ± {scale * e:.{digits}f}" if e and not math.isnan(e) else "")
    return f


def _qty(v, sig=4) -> str:
    """A count for a table: thousands separated from 1000 up, else ``sig`` significant digits."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    v = float(f"{v:.{sig}g}")
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:g}"


def _qty_ci(mean, ci) -> str:
    return _qty(mean) + (f" ± {_qty(ci, 2)}" if ci and not math.isnan(ci) else "")


def _sig(v, n=4):
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{n}g}"


def _label(rule, backend, several_backends) -> str:
    return f"{rule} [{backend}]" if several_backends else str(rule)


def _is_reference(rule: str, g: pd.DataFrame) -> bool:
    return rule in REFERENCE_RULES or g["T"].isna().all()


# ----------------------------------------------------------------------------- sections
def _accuracy_vs_T(summ: pd.DataFrame) -> list[str]:
    parts = ["<h2 id='acc-T'>Accuracy against time steps</h2>",
             "<p class='note'>Mean test accuracy over seeds with 95 % CI bars, every T read from one evaluation "
             "pass at the largest T. Dashed horizontal lines: networks without time steps (the CNN); dashed "
             "lines with square markers: ANN→SNN conversion.</p><div class='charts'>"]
    for (dataset, arch), grp in summ.groupby(["dataset", "arch"]):
        several = grp["backend"].nunique() > 1
        series, hlines = [], []
        for (rule, backend), g in grp.groupby(["rule", "backend"]):
            label = _label(rule, backend, several)
            gt = g[g["T"].notna()]
            if not gt.empty:
                series.append({"label": label + (" (reference)" if rule in REFERENCE_RULES else ""),
                               "x": [float(t) for t in gt["T"]], "y": [float(a) for a in gt["acc_mean"]],
                               "err": [float(e) for e in gt["acc_ci95"]], "dashed": rule in REFERENCE_RULES})
            gn = g[g["T"].isna()]
            if not gn.empty:
                hlines.append((f"{label} (ANN)", float(gn["acc_mean"].mean())))
        parts.append(line_chart(series, hlines=hlines, logx=True, title=f"{dataset} / {arch}",
                                xlabel="time steps T", ylabel="test accuracy"))
    parts.append("</div>")
    return parts


def _accuracy_vs_depth(df: pd.DataFrame) -> list[str]:
    """Test accuracy at each method's best T (chosen on validation) against network depth, for rows
    whose ``extra.arch_spec`` has a depth (the resnet family); one chart per dataset and method,
    one line per kind of network, then residual minus plain and deeper minus shallower, paired by
    seed. Empty where no row has a depth."""
    from suite.reports.comparison import accuracy_by_network, depth_pairs, depth_table, residual_pairs

    mt = depth_table(df)
    if mt.empty:
        return []
    mt["network"] = [f"{'ResNet' if r else 'plain'} w{w}" + ("" if bn else ", no BN")
                     for r, w, bn in zip(mt["residual"], mt["width"], mt["batch_norm"])]
    parts = ["<h2 id='depth'>Accuracy against depth</h2>",
             "<p class='note'>Networks of the resnet family (residual and plain twins, with and without BN): "
             "test accuracy at each method's best T (chosen on validation; the CNN has none), mean over seeds "
             "with 95 % CI bars. <i>grad ratio</i>: first / last weight-gradient norm in the first epoch, "
             "geometric mean over seeds (&gt; 1: gradients grow towards the input, &lt; 1: they vanish).</p>"
             "<div class='charts'>"]
    for (dataset, method), grp in mt.groupby(["dataset", "method"], sort=True):
        series = []
        for net, g in grp.groupby("network", sort=True):
            g = g.sort_values("depth")
            series.append({"label": net, "x": [float(d) for d in g["depth"]], "y": [float(a) for a in g["acc_best"]],
                           "err": [float(e) for e in g["acc_best_ci"]], "dashed": "plain" in net})
        parts.append(line_chart(series, title=f"{dataset}: {method}", xlabel="depth (weight layers)",
                                ylabel="test accuracy"))
    parts.append("</div>")
    t = mt.sort_values(["dataset", "method", "network", "depth"]).assign(acc="")
    parts.append(_table(t, ["dataset", "method", "network", "depth", "arch", "seeds", "best_T", "acc", "grad_ratio"],
                        {"best_T": lambda v: f"{int(v)}", "grad_ratio": lambda v: f"{v:.3g}"},
                        {"best_T": "best T", "acc": "test accuracy (%)", "grad_ratio": "grad ratio"},
                        cell_fmt={"acc": _pm("acc_best", "acc_best_ci", 100.0)}))
    per = accuracy_by_network(df)
    rp = residual_pairs(df, per)
    if len(rp):
        parts.append("<p class='note'>Residual minus plain twin of the same depth, width and BN, each at its own "
                     "best T, paired by seed (points, 95 % CI); a verdict only where the interval excludes zero.</p>")
        parts.append(_differences(rp, ["dataset", "method", "depth", "batch_norm", "residual", "plain"], {"batch_norm": "BN"}))
    dp = depth_pairs(df, per)
    if len(dp):
        parts.append("<p class='note'>Each deeper network minus the shallowest of its kind (same method, "
                     "residual or plain, width and BN), each at its own best T, paired by seed (points, 95 % CI): "
                     "does depth pay?</p>")
        parts.append(_differences(dp, ["dataset", "method", "deeper", "shallower"]))
    return parts


def _differences(pairs: pd.DataFrame, cols: list[str], headers: dict | None = None) -> str:
    """A table of paired differences (``diff``, ``ci95`` as fractions) in points with their interval,
    after the columns ``cols`` that name each pair."""
    signed = {k: (lambda v: f"{v:+.2f}") for k in ("d", "lo", "hi")}
    return _table(pairs.assign(d=100 * pairs["diff"], lo=100 * (pairs["diff"] - pairs["ci95"]),
                               hi=100 * (pairs["diff"] + pairs["ci95"])),
                  cols + ["seeds", "d", "lo", "hi", "verdict"], signed,
                  {**(headers or {}), "d": "difference", "lo": "CI low", "hi": "CI high"})


def _accuracy_vs_cost(summ: pd.DataFrame, energy_name: str) -> list[str]:
    summ = summ.assign(energy_nj=summ["energy_pj"] / 1e3)
    parts = ["<h2 id='acc-cost'>Accuracy against operations and energy</h2>",
             "<p class='note'>One point per rule and T (mean over seeds). Operations per sample = SynOps (accumulates "
             "driven by spikes) + MACs (layers fed analog values: the first layer of a direct-coded SNN, every ANN "
             f"layer). Energy per sample = e<sub>MAC</sub>·MACs + e<sub>AC</sub>·SynOps with the "
             f"<b>{escape(energy_name)}</b> model. Ringed points form the Pareto front (no other point is both "
             "cheaper and more accurate).</p>"]
    fronts = []
    for (dataset, arch), grp in summ.groupby(["dataset", "arch"]):
        several = grp["backend"].nunique() > 1
        parts.append(f"<h3>{escape(str(dataset))} / {escape(str(arch))}</h3><div class='charts'>")
        for col, xlabel, name in (("ops", "operations per sample (SynOps + MACs)", "operations"),
                                  ("energy_nj", "energy per sample (nJ)", "energy")):
            series, pts = [], []
            for (rule, backend), g in grp.groupby(["rule", "backend"]):
                g = g[g[col].notna() & (g[col] > 0)]
                if g.empty:
                    continue
                series.append({"label": _label(rule, backend, several), "x": [float(v) for v in g[col]],
                               "y": [float(a) for a in g["acc_mean"]], "err": [float(e) for e in g["acc_ci95"]],
                               "dashed": _is_reference(rule, g), "markers_only": g["T"].isna().all()})
                pts += [(float(c), float(a), rule, backend, t) for c, a, t in zip(g[col], g["acc_mean"], g["T"])]
            front = pareto_front([(c, a) for c, a, *_ in pts])
            parts.append(line_chart(series, logx=10, highlight=front, title=f"{dataset} / {arch}: accuracy vs {name}",
                                    xlabel=xlabel, ylabel="test accuracy"))
            if col == "energy_nj":
                on = set(front)
                fronts += [{"dataset": dataset, "arch": arch, "rule": r, "backend": b, "T": t, "accuracy": a,
                            "energy_nj": c} for c, a, r, b, t in sorted(pts) if (c, a) in on]
        parts.append("</div>")
    if fronts:
        f = pd.DataFrame(fronts)
        parts.append("<h3>Pareto-optimal points (accuracy vs energy)</h3>")
        parts.append(_table(f, ["dataset", "arch", "rule", "backend", "T", "accuracy", "energy_nj"],
                            {"accuracy": lambda v: f"{100 * v:.2f} %", "T": lambda v: f"{int(v)}",
                             "energy_nj": _qty}, {"energy_nj": "energy (nJ)"}))
    return parts


def _layer_rates(df: pd.DataFrame) -> list[str]:
    ok = df[df["status"] == "ok"]
    recs = []
    for _, row in ok.iterrows():
        acts = _extra(row, "activations") or {}
        rates = _extra(row, "spike_rates") or {}
        if acts:
            items = [(n, a.get("module", ""), a.get("rate"), a.get("sparsity")) for n, a in acts.items()
                     if a.get("kind") == "spiking"]
        else:
            items = [(n, "", r, None if r is None else 1 - r) for n, r in rates.items()]
        for k, (name, module, rate, sparsity) in enumerate(sorted(items, key=lambda it: _natural(it[0]))):
            recs.append({"dataset": row["dataset"], "arch": row["arch"], "rule": row["rule"], "backend": row["backend"],
                         "T": row["T"], "seed": row["seed"], "layer": k + 1, "module": f"{name} {module}".strip(),
                         "rate": rate, "sparsity": sparsity})
    parts = ["<h2 id='layers'>Per-layer spike rates</h2>"]
    if not recs:
        return parts + ["<p>No spiking layers recorded.</p>"]
    r = pd.DataFrame(recs)
    r["rate"] = pd.to_numeric(r["rate"], errors="coerce")
    parts.append("<p class='note'>Spikes per neuron per time step in each spiking layer (input to output), at each "
                 "rule's largest T, mean over seeds; activation sparsity = 1 − rate. Hover a bar for the module.</p>"
                 "<div class='charts'>")
    tables = []
    for (dataset, arch), grp in r.groupby(["dataset", "arch"]):
        several = grp["backend"].nunique() > 1
        tmax = grp.groupby(["rule", "backend"])["T"].transform("max")
        last = grp[grp["T"] == tmax]
        agg = last.groupby(["rule", "backend", "T", "layer"]).agg(
            rate=("rate", "mean"), ci=("rate", ci95), module=("module", "first"), seeds=("seed", "nunique")).reset_index()
        layers = sorted(agg["layer"].unique())
        series, tips = [], {}
        for j, ((rule, backend), g) in enumerate(agg.groupby(["rule", "backend"])):
            by = dict(zip(g["layer"], g["rate"]))
            mods = dict(zip(g["layer"], g["module"]))
            series.append((f"{_label(rule, backend, several)} (T={int(g['T'].iloc[0])})", [by.get(k) for k in layers]))
            for i, k in enumerate(layers):
                if k in mods:
                    tips[(j, i)] = f" (module {mods[k]})"
        parts.append(bar_chart([f"layer {k}" for k in layers], series, title=f"{dataset} / {arch}: spike rate per layer",
                               ylabel="spikes / neuron / step", tooltips=tips))
        tables.append(agg.assign(dataset=dataset, arch=arch))
    parts.append("</div><details><summary>Per-layer table (all rules at their largest T)</summary>")
    t = pd.concat(tables, ignore_index=True)
    t["sparsity"] = 1 - t["rate"]
    parts.append(_table(t, ["dataset", "arch", "rule", "backend", "T", "layer", "module", "seeds", "rate", "ci", "sparsity"],
                        {"T": lambda v: f"{int(v)}", "rate": lambda v: f"{v:.4f}", "ci": lambda v: f"± {v:.4f}",
                         "sparsity": lambda v: f"{v:.4f}"}, {"ci": "rate 95 % CI"}))
    parts.append("</details>")
    return parts


def _learning_curves(df: pd.DataFrame) -> list[str]:
    """Per-epoch training loss and validation accuracy (``extra.history``), at each cell's largest T."""
    ok = df[df["status"] == "ok"]
    have = [i for i, r in ok.iterrows() if _extra(r, "history")]
    if not have:
        return []
    parts = ["<h2 id='curves'>Learning curves</h2>",
             "<p class='note'>Mean training loss of every epoch and validation accuracy after it (on the "
             "validation split, never the test set), at each run's largest T; one line per seed.</p>"
             "<div class='charts'>"]
    sub = ok.loc[have]
    for (dataset, arch), grp in sub.groupby(["dataset", "arch"]):
        several = grp["backend"].nunique() > 1
        loss, val = [], []
        for (rule, backend, seed), g in grp.groupby(["rule", "backend", "seed"]):
            row = g.loc[_num(g, "T").fillna(0).idxmax()]
            pts = _extra(row, "history")
            t = "" if pd.isna(row["T"]) else f", T={int(row['T'])}"
            label = f"{_label(rule, backend, several)} s{int(seed)}{t}"
            lp = [p for p in pts if p.get("train_loss") is not None]
            if lp:
                loss.append({"label": label, "x": [float(p["epoch"]) for p in lp],
                             "y": [float(p["train_loss"]) for p in lp]})
            vp = [p for p in pts if p.get("val_accuracy") is not None]
            if vp:
                val.append({"label": label + f" (N={vp[-1].get('n_val')})", "x": [float(p["epoch"]) for p in vp],
                            "y": [float(p["val_accuracy"]) for p in vp]})
        if loss:
            parts.append(line_chart(loss, title=f"{dataset} / {arch}: training loss", xlabel="epoch",
                                    ylabel="mean training loss"))
        if val:
            parts.append(line_chart(val, title=f"{dataset} / {arch}: validation accuracy", xlabel="epoch",
                                    ylabel="validation accuracy"))
    parts.append("</div>")
    return parts


def _comparison(df: pd.DataFrame) -> list[str]:
    """The head-to-head tables (methods at T=4, T=16 and best T by validation; paired differences)."""
    from suite.reports.comparison import FIXED_T, method_table, overview_cell, overview_table, paired_table, skipped

    if "val_accuracy" not in df or _num(df, "val_accuracy").isna().all():
        return []
    mt, pt, sk = method_table(df), paired_table(df), skipped(df)
    if mt.empty:
        return []
    pct = lambda m, e: _pm(m, e, scale=100, digits=2)
    parts = ["<h2 id='comparison'>Comparison: every method on the same network</h2>",
             "<p class='note'>Test accuracy (%) as mean ± 95 % CI over seeds, at T=" + " and T=".join(map(str, FIXED_T))
             + " and at each method's <b>best T, chosen on the validation split</b> (highest mean validation "
             "accuracy; the test set is read once per run, at the end). SynOps, energy and training time at the "
             "best T. Paired differences compare two methods seed by seed, each at its best T; a winner is named "
             "only where the 95 % interval of the difference excludes zero.</p>"]
    ov = overview_table(mt, pt, sk)
    nets = [c for c in ov.columns if c not in ("method", "mean")]
    if len(nets) > 1:  # several networks: one line per method across them first
        head = "".join(f"<th>{escape(n)}</th>" for n in nets)
        body = []
        for _, r in ov.iterrows():
            cells = [overview_cell(r[n]) for n in nets]
            body.append(f"<tr><td class='l'>{escape(str(r['method']))}</td>" + "".join(
                f"<td>{'<b>' + escape(t) + '</b>' if top and t else escape(t)}</td>" for t, top in cells) + "</tr>")
        parts += ["<h3>Overview</h3>",
                  "<p class='note'>Test accuracy (%) at each method's best T (chosen on validation), mean over seeds. "
                  "<b>Bold</b>: no other method beats it on that network (no paired 95 % interval excludes zero in "
                  "another's favour); <i>skipped</i>: the method cannot run that network (reasons below).</p>",
                  f"<table><tr><th class='l'>method</th>{head}</tr>{''.join(body)}</table>"]
    for (dataset, arch), g in mt.groupby(["dataset", "arch"], sort=True):
        g = g.sort_values("acc_best", ascending=False)
        g = g.assign(energy_nj=g["energy_pj"] / 1e3,
                     best=["" if b is None or (isinstance(b, float) and math.isnan(b)) else str(int(b))
                           for b in g["best_T"]])
        parts.append(f"<h3>{escape(str(dataset))} / {escape(str(arch))}</h3>")
        parts.append(_table(g, ["method", "seeds", "acc_T4", "acc_T16", "best", "acc_best", "val_best", "synops",
                                "energy_nj", "train_time_s"],
                            {"acc_T4": lambda v: "", "acc_T16": lambda v: "", "acc_best": lambda v: "",
                             "val_best": lambda v: f"{100 * v:.2f}", "synops": _qty, "energy_nj": _qty,
                             "train_time_s": lambda v: f"{v:.1f}"},
                            {"acc_T4": "T=4", "acc_T16": "T=16", "best": "best T (val)", "acc_best": "at best T",
                             "val_best": "val. at best T", "synops": "SynOps / sample", "energy_nj": "energy (nJ)",
                             "train_time_s": "training (s)"},
                            cell_fmt={"acc_T4": pct("acc_T4", "acc_T4_ci"), "acc_T16": pct("acc_T16", "acc_T16_ci"),
                                      "acc_best": pct("acc_best", "acc_best_ci")}))
        p = pt[(pt["dataset"] == dataset) & (pt["arch"] == arch)] if len(pt) else pt
        if len(p):
            p = p.assign(diff_pp=100 * p["diff"], ci_pp=100 * p["ci95"])
            parts.append("<details open><summary>Paired differences (A − B, percentage points)</summary>")
            parts.append(_table(p, ["A", "T_A", "B", "T_B", "seeds", "diff_pp", "ci_pp", "verdict"],
                                {"diff_pp": lambda v: f"{v:+.2f}", "ci_pp": lambda v: f"± {v:.2f}",
                                 "T_A": lambda v: f"{int(v)}", "T_B": lambda v: f"{int(v)}"},
                                {"diff_pp": "A − B", "ci_pp": "95 % CI"},
                                row_class=lambda r: "front" if r["verdict"] not in ("no difference shown",
                                                                                   "no common seeds") else ""))
            parts.append("</details>")
        s = sk[(sk["dataset"] == dataset) & (sk["arch"] == arch)] if len(sk) else sk
        if len(s):
            parts.append("<p class='note'>Could not run this network: " + "; ".join(
                f"<b>{escape(str(r['rule']))}</b> ({escape(str(r['reason']))})" for _, r in s.iterrows()) + "</p>")
    return parts


def _summary_table(summ: pd.DataFrame) -> list[str]:
    s = summ.sort_values(["dataset", "arch", "rule", "backend", "T"], na_position="first").copy()
    s["accuracy"] = s.apply(_pm("acc_mean", "acc_ci95", 100, 2, " %"), axis=1)
    s["SynOps"] = [_qty_ci(m, e) for m, e in zip(s["synops"], s["synops_ci95"])]
    s["energy (nJ)"] = [_qty_ci(m / 1e3, e / 1e3) for m, e in zip(s["energy_pj"], s["energy_ci95"])]
    return ["<h2 id='summary'>Summary: mean ± 95 % CI over seeds</h2>",
            "<p class='note'>95 % CI = t<sub>0.975, n−1</sub>·s/√n over the n seeds (blank for one seed). Counts are "
            "per test sample over the first T steps.</p>",
            _table(s, ["dataset", "arch", "rule", "backend", "T", "seeds", "accuracy", "SynOps", "macs", "energy (nJ)",
                       "spikes_per_sample"],
                   {"T": lambda v: f"{int(v)}", "seeds": lambda v: f"{int(v)}", "macs": _qty,
                    "spikes_per_sample": _qty}, {"macs": "MACs", "spikes_per_sample": "spikes / sample"})]


def _timing(df: pd.DataFrame) -> list[str]:
    ok = df[df["status"] == "ok"].copy()
    parts = ["<h2 id='time'>Training time and throughput</h2>"]
    if ok.empty:
        return parts + ["<p>No finished cells.</p>"]
    # one value per cell (rows of a cell share its training)
    ok["eval_time_s"] = [_extra(r, "eval_time_s") for _, r in ok.iterrows()]
    cells = ok.drop_duplicates("cell_id") if ok["cell_id"].notna().all() else ok
    for c in ("train_time_s", "samples_per_s", "peak_mem_mb", "eval_time_s", "epochs", "n_train", "train_T"):
        cells[c] = _num(cells, c)
    g = cells.groupby(["dataset", "arch", "rule", "backend"], dropna=False)
    t = g.agg(seeds=("seed", "nunique"), epochs=("epochs", "max"), n_train=("n_train", "max"),
              train_T=("train_T", "max"), time=("train_time_s", "mean"), tput=("samples_per_s", "mean"),
              eval_s=("eval_time_s", "mean"), mem=("peak_mem_mb", "max")).reset_index()
    t["time_ci"] = [ci95(x["train_time_s"]) for _, x in g]
    t["tput_ci"] = [ci95(x["samples_per_s"]) for _, x in g]
    t["train time (s)"] = t.apply(_pm("time", "time_ci", 1, 1), axis=1)
    t["samples / s"] = t.apply(_pm("tput", "tput_ci", 1, 0), axis=1)
    parts.append("<p class='note'>Per cell (rule × dataset × arch × seed): wall-clock training time, training "
                 "samples per second (epochs × training samples / training time), evaluation time of the one "
                 "pass at the largest T, and peak memory (CPU: the process's max RSS, CUDA: max allocated). "
                 "Machines differ: see the environment of each run below.</p>")
    parts.append(_table(t, ["dataset", "arch", "rule", "backend", "seeds", "epochs", "n_train", "train_T",
                            "train time (s)", "samples / s", "eval_s", "mem"],
                        {"epochs": lambda v: f"{int(v)}", "n_train": lambda v: f"{int(v)}",
                         "train_T": lambda v: f"{int(v)}", "seeds": lambda v: f"{int(v)}",
                         "eval_s": lambda v: f"{v:.2f}", "mem": lambda v: f"{v:.0f}"},
                        {"eval_s": "eval (s)", "mem": "peak mem (MB)", "train_T": "train T"}))
    charts = ["<div class='charts'>"]
    for (dataset, arch), grp in t.groupby(["dataset", "arch"]):
        several = grp["backend"].nunique() > 1
        labels = [_label(r, b, several) for r, b in zip(grp["rule"], grp["backend"])]
        charts.append(bar_chart(labels, [("samples / s", list(grp["tput"]))], title=f"{dataset} / {arch}: training throughput",
                                ylabel="training samples / s"))
    parts += charts + ["</div>"]
    return parts


def _runs(df: pd.DataFrame, runs: list[dict]) -> list[str]:
    parts = ["<h2 id='runs'>Commands and environment</h2>",
             "<p class='note'>Every invocation that wrote to the result directories (DIR/runs.jsonl), with the "
             "number of rows in this report that it produced.</p>"]
    if not runs:
        return parts + ["<p>No runs.jsonl found.</p>"]
    counts = df["command"].value_counts().to_dict() if "command" in df else {}
    recs = []
    for run in runs:
        env = run.get("environment") or {}
        recs.append({"source": run.get("_source", ""), "command": str(run.get("command", "")),
                     "rows": counts.get(run.get("command"), 0), "cells": run.get("cells"),
                     "python": env.get("python"), "torch": env.get("torch"), "suite": env.get("suite"),
                     "device": env.get("gpu") or env.get("cpu"), "cpus": env.get("cpu_count"),
                     "threads": env.get("torch_threads"), "platform": env.get("platform"),
                     "other": ", ".join(f"{k}={v}" for k, v in env.items()
                                        if k not in ("python", "torch", "suite", "gpu", "cpu", "cpu_count",
                                                     "torch_threads", "platform"))})
    r = pd.DataFrame(recs).astype(object)
    parts.append(_table(r, ["source", "command", "rows", "cells", "python", "torch", "suite", "device", "cpus",
                            "threads", "platform", "other"]))
    return parts


def _papers(df: pd.DataFrame) -> list[str]:
    parts = ["<h2 id='papers'>Rules and papers</h2><ul>"]
    known = df.dropna(subset=["paper"])
    for rule, g in sorted(known.groupby("rule"), key=lambda kv: str(kv[0])):
        versions = ", ".join(sorted({str(v) for v in g["plugin_version"].dropna()}))
        enc = ", ".join(sorted({str(v) for v in g["encoding"].dropna()}))
        parts.append(f"<li><b>{escape(str(rule))}</b>: {escape(str(g['paper'].iloc[0]))}"
                     + (f" <small>(plugin {escape(versions)}; encoding {escape(enc)})</small>" if versions or enc else "")
                     + "</li>")
    parts.append("</ul>")
    return parts


def _csv_link(df: pd.DataFrame) -> str:
    cols = [c for c in COLUMNS if c in df.columns and c != "extra"] + (["source"] if "source" in df else [])
    # gzip, then base64: the rows repeat commands and settings, so this is a tenth of the plain text
    data = base64.b64encode(gzip.compress(df[cols].to_csv(index=False).encode(), mtime=0)).decode("ascii")
    return (f"<p><a download='snn-suite-rows.csv.gz' href='data:application/gzip;base64,{data}'>Download all rows "
            "as CSV</a> (gzip; embedded in this file).</p>")


def render(df: pd.DataFrame, sources: list[str], runs: list[dict], *, energy=None) -> str:
    df, dropped = deduplicate(df)
    em_names = sorted({str((_extra(r, "energy_model") or {}).get("name", "45nm_fp32")) for _, r in df.iterrows()})
    if energy is not None:
        df = apply_energy(df, energy)
        energy_name = energy_model(energy).name
    else:
        energy_name = ", ".join(em_names) if em_names else energy_model().name
    em = energy_model(energy if energy is not None else (em_names[0] if len(em_names) == 1 else None))
    n_ok = int((df["status"] == "ok").sum()) if len(df) else 0
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             "<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>snn-suite comparison report</title><style>{CSS}</style></head><body>",
             "<h1>snn-suite comparison report</h1>",
             f"<p>{len(df)} rows ({n_ok} ok) from {len(sources)} result director{'y' if len(sources) == 1 else 'ies'}: "
             + ", ".join(f"<code>{escape(s)}</code>" for s in sources)
             + (f"; {dropped} duplicate row{'s' if dropped != 1 else ''} of cells found in more than one directory "
                "dropped (latest kept)" if dropped else "")
             + f". Generated {escape(datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}.</p>",
             f"<p class='note'>Energy model: <b>{escape(energy_name)}</b> — MAC {em.mac_pj:g} pJ, AC {em.ac_pj:g} pJ"
             + (f", neuron update {em.neuron_pj:g} pJ" if em.neuron_pj else "")
             + f"; {escape(em.source)}. Memory traffic is not included.</p>",
             "<nav><a href='#comparison'>comparison</a><a href='#acc-T'>accuracy vs T</a><a href='#acc-cost'>accuracy vs ops / energy</a>"
             "<a href='#layers'>spike rates</a><a href='#summary'>summary</a><a href='#time'>time</a>"
             "<a href='#runs'>commands</a><a href='#rows'>rows</a></nav>"]
    summ = summarise(df) if len(df) else pd.DataFrame()
    if summ.empty:
        parts.append("<p>No successful rows.</p>")
    else:
        parts += _comparison(df)
        parts += _accuracy_vs_T(summ)
        parts += _accuracy_vs_depth(df)
        parts += _accuracy_vs_cost(summ, energy_name)
        parts += _layer_rates(df)
        parts += _learning_curves(df)
        parts += _summary_table(summ)
        parts += _timing(df)
        from suite.reports.model_metrics import section as model_metrics_section
        parts += model_metrics_section(df, _table, _extra)
    bad = df[df["status"] != "ok"] if len(df) else df
    if len(bad):
        parts.append("<h2 class='bad'>Cells that did not finish</h2>")
        bad = bad.assign(error=bad["error"].fillna("").astype(str).str.split("\n").str[0])
        parts.append(_table(bad, ["rule", "dataset", "arch", "backend", "seed", "T", "status", "error"],
                            {"T": lambda v: f"{int(v)}"}))
    if len(df):
        parts += _papers(df)
    parts += _runs(df, runs)
    parts.append("<h2 id='rows'>All rows</h2>")
    if len(df):
        parts.append(_csv_link(df))
        parts.append("<details><summary>Show the table</summary>")
        parts.append(_table(df, ["rule", "dataset", "arch", "encoding", "backend", "T", "seed", "status", "accuracy",
                                 "synops", "macs", "energy_pj", "spikes_per_sample", "train_time_s", "epochs",
                                 "plugin_version", "config_hash", "source"],
                            {"T": lambda v: f"{int(v)}"}))
        parts.append("</details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def read_runs(dirs) -> list[dict]:
    runs = []
    for d in dirs:
        f = Path(d) / "runs.jsonl"
        if f.is_file():
            for line in f.read_text().splitlines():
                if line.strip():
                    try:
                        runs.append({**json.loads(line), "_source": str(d)})
                    except json.JSONDecodeError:
                        continue  # a line cut short by a killed process: the rows still count
    return runs


def write_report(dirs: list[Path], output: Path, energy=None) -> Path:
    """Merge the result directories ``dirs`` into one self-contained HTML file at ``output``;
    ``energy`` recomputes every row's energy with another model (see :func:`suite.opcount.energy_model`)."""
    df = read_frame(*dirs)
    html = render(df, [str(d) for d in dirs], read_runs(dirs), energy=energy)
    return write_atomic(Path(output), lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
