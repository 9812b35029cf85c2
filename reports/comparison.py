"""The head-to-head view of a results folder: every method on the same dataset and network.

Per (dataset, arch) and method: test accuracy at T=4, T=16 and at the method's best T with the
95 % CI over seeds, SynOps and energy per sample and training time at that T. **Best T is chosen on
validation** (the T with the highest mean validation accuracy; ties go to the smaller T), never on
test. Paired differences compare two methods seed by seed at their best T; "A > B" is said only
where the 95 % interval of the difference excludes zero (:func:`suite.stats.paired_difference`).
"""
from __future__ import annotations

import itertools
import math

import pandas as pd

from suite.stats import ci95, paired_difference

#: time steps every comparison table reports (besides the best T)
FIXED_T = (4, 16)


def _num(s) -> pd.Series:
    return pd.to_numeric(s, errors="coerce")


def method_label(rule: str, backend: str, several_backends: bool) -> str:
    return f"{rule} [{backend}]" if several_backends else str(rule)


def _hps(g: pd.DataFrame) -> list[dict]:
    return [h if isinstance(h, dict) else {} for h in g["hp"]] if "hp" in g else [{} for _ in range(len(g))]


def _differing_hps(g: pd.DataFrame) -> set:
    """The hyper-parameters that differ between rows of one rule on one network. Only keys every row
    has count: a key that only newer rows record (a rule that gained an option) splits nothing."""
    hps = _hps(g)
    keys = set.intersection(*(set(h) for h in hps)) if hps else set()
    return {k for k in keys if len({repr(h[k]) for h in hps}) > 1}


def _short(v) -> str:
    """A setting as a label shows it: as written, or a long float to 4 significant digits."""
    text = str(v)
    return f"{v:.4g}" if isinstance(v, float) and len(text) > 8 else text


def _formats(g: pd.DataFrame, keys) -> dict:
    """Per key, how its values are shown in labels: :func:`_short` where that tells every value of
    the rows apart, else as written (so two settings never share a label)."""
    out = {}
    for k in keys:
        values = {repr(h[k]): h[k] for h in _hps(g) if k in h}.values()
        out[k] = _short if len({_short(v) for v in values}) == len(values) else str
    return out


def _hp_variants(g: pd.DataFrame, keys: list, formats: dict):
    """Split one rule's rows on one network by ``keys`` (shown as ``formats`` says): ``(suffix,
    rows)`` per variant, suffix ``""`` where there are no keys."""
    if not keys:
        return [("", g)]
    tags = [", ".join(f"{k}={formats[k](h.get(k))}" for k in keys) for h in _hps(g)]
    return [(f" ({tag})", g[[t == tag for t in tags]]) for tag in sorted(set(tags))]


def methods(df: pd.DataFrame):
    """Yield ``(dataset, arch, label, rows)`` for the ok rows of each method: a rule on a backend,
    split further by the hyper-parameters its rows differ in on some network (e.g. two surrogate
    widths read from two folders); the label then names them, on every network, so one variant
    keeps one name even where the other has no rows."""
    ok = df[df["status"] == "ok"]
    split: dict = {}
    for (_, _, rule), g in ok.groupby(["dataset", "arch", "rule"], sort=True):
        split.setdefault(rule, set()).update(_differing_hps(g))
    # the backend is named where the rule ran on several anywhere in the rows, so that it too
    # keeps one name on every network
    several = ok.groupby("rule")["backend"].nunique() > 1
    formats = {rule: _formats(ok[ok["rule"] == rule], keys) for rule, keys in split.items()}
    for (dataset, arch), grp in ok.groupby(["dataset", "arch"], sort=True):
        for (rule, backend), g in grp.groupby(["rule", "backend"], sort=True):
            label = method_label(rule, backend, bool(several[rule]))
            for suffix, rows in _hp_variants(g, sorted(split.get(rule, ())), formats[rule]):
                yield dataset, arch, label + suffix, rows


def best_T(g: pd.DataFrame):
    """The method's T with the highest mean validation accuracy over seeds (None: no time steps,
    or no validation rows -- then no best T is claimed)."""
    if g["T"].isna().all():
        return None
    val = _num(g["val_accuracy"]) if "val_accuracy" in g else pd.Series(dtype=float)
    if val.isna().all():
        return math.nan
    means = g.assign(_v=val).dropna(subset=["_v"]).groupby("T")["_v"].mean()
    return int(max(means.index, key=lambda t: (round(means[t], 12), -t)))


def _at(g: pd.DataFrame, T) -> pd.DataFrame:
    if T is None:
        return g
    return g[_num(g["T"]) == T]


def method_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, arch, method); accuracies in [0, 1]."""
    out = []
    for dataset, arch, label, g in methods(df):
        bt = best_T(g)
        row = {"dataset": dataset, "arch": arch, "method": label, "seeds": int(g["seed"].nunique()),
               "best_T": bt}
        for T in FIXED_T:
            at = _at(g, None if g["T"].isna().all() else T)
            acc = _num(at["accuracy"])
            row[f"acc_T{T}"], row[f"acc_T{T}_ci"] = (acc.mean(), ci95(acc)) if len(acc) else (math.nan, math.nan)
        at = _at(g, bt) if not (isinstance(bt, float) and math.isnan(bt)) else g.iloc[0:0]
        acc = _num(at["accuracy"])
        row.update(acc_best=acc.mean() if len(acc) else math.nan, acc_best_ci=ci95(acc) if len(acc) else math.nan,
                   val_best=_num(at["val_accuracy"]).mean() if len(at) else math.nan,
                   synops=_num(at["synops"]).mean() if len(at) else math.nan,
                   macs=_num(at["macs"]).mean() if len(at) else math.nan,
                   energy_pj=_num(at["energy_pj"]).mean() if len(at) else math.nan,
                   train_time_s=_num(at["train_time_s"]).mean() if len(at) else math.nan,
                   train_time_ci=ci95(_num(at["train_time_s"])) if len(at) else math.nan,
                   epochs=int(_num(at["epochs"]).max()) if len(at) and _num(at["epochs"]).notna().any() else None)
        out.append(row)
    return pd.DataFrame(out)


def _accuracy_by_seed(g: pd.DataFrame):
    """``(best T, {seed: test accuracy at it})`` of one method's rows, or None where no best T can be
    claimed (no validation rows): what the paired differences pair."""
    bt = best_T(g)
    if isinstance(bt, float) and math.isnan(bt):
        return None
    at = _at(g, bt)
    return bt, dict(zip(at["seed"].astype(int), _num(at["accuracy"])))


def paired_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every pair of methods on the same (dataset, arch), each at its own best T, paired by seed
    (``rule_A``/``rule_B``: the rules behind the two methods)."""
    per = {}
    for dataset, arch, label, g in methods(df):
        best = _accuracy_by_seed(g)
        if best is not None:
            per.setdefault((dataset, arch), []).append((label, g["rule"].iloc[0], *best))
    out = []
    for (dataset, arch), ms in per.items():
        for (a, ra, ta, acc_a), (b, rb, tb, acc_b) in itertools.combinations(ms, 2):
            d = paired_difference(acc_a, acc_b)
            winner = {"A > B": a, "A < B": b}.get(d["verdict"])
            verdict = f"{winner} > {b if winner == a else a}" if winner else d["verdict"]
            out.append({"dataset": dataset, "arch": arch, "A": a, "rule_A": ra, "T_A": ta, "B": b, "rule_B": rb,
                        "T_B": tb, "seeds": d["n"], "diff": d["mean"], "ci95": d["ci95"], "low": d["low"],
                        "high": d["high"], "winner": winner, "verdict": verdict})
    return pd.DataFrame(out)


def unbeaten(pt: pd.DataFrame) -> set:
    """``(dataset, arch, method)`` of the methods that no other method on the same network beats
    (no paired interval excludes zero in another's favour); methods missing from ``pt`` count too."""
    beaten = set()
    for _, r in pt.iterrows():
        if isinstance(r["winner"], str):
            beaten.add((r["dataset"], r["arch"], r["B"] if r["winner"] == r["A"] else r["A"]))
    return beaten


def overview_table(mt: pd.DataFrame, pt: pd.DataFrame, sk: pd.DataFrame) -> pd.DataFrame:
    """From :func:`method_table`, :func:`paired_table` and :func:`skipped`: one row per method, one
    column per ``dataset / arch`` with the test accuracy at the method's best T (mean over seeds),
    that T, and whether the method is unbeaten on that network (see :func:`unbeaten`); methods
    ordered by their mean accuracy over the networks they ran."""
    if mt.empty:
        return mt
    beaten = unbeaten(pt) if len(pt) else set()
    out = {}
    for _, r in mt.iterrows():
        net = f"{r['dataset']} / {r['arch']}"
        bt = r["best_T"]
        out.setdefault(r["method"], {})[net] = {
            "acc": r["acc_best"], "T": None if bt is None or (isinstance(bt, float) and math.isnan(bt)) else int(bt),
            "unbeaten": (r["dataset"], r["arch"], r["method"]) not in beaten}
    for _, r in sk.iterrows():
        out.setdefault(r["rule"], {}).setdefault(f"{r['dataset']} / {r['arch']}", {"skipped": r["reason"]})
    nets = sorted({n for cells in out.values() for n in cells})
    rows = []
    for method, cells in out.items():
        accs = [c["acc"] for c in cells.values() if "acc" in c and c["acc"] == c["acc"]]
        rows.append({"method": method, "mean": sum(accs) / len(accs) if accs else math.nan,
                     **{n: cells.get(n) for n in nets}})
    return pd.DataFrame(rows).sort_values("mean", ascending=False, na_position="last").reset_index(drop=True)


def overview_cell(c) -> tuple[str, bool]:
    """The text of one overview cell and whether the method is unbeaten there."""
    if not c:
        return "", False
    if "skipped" in c:
        return "skipped", False
    t = f" (T={c['T']})" if c["T"] is not None else ""
    return _pct(c["acc"]) + t, bool(c["unbeaten"])


def skipped(df: pd.DataFrame) -> pd.DataFrame:
    """Methods that could not run a network, with the reason (one line per rule, dataset, arch)."""
    s = df[df["status"] == "skipped"]
    if s.empty:
        return s
    s = s.assign(reason=s["error"].fillna("").astype(str).str.split("\n").str[0])
    return s.drop_duplicates(["dataset", "arch", "rule"])[["dataset", "arch", "rule", "reason"]]


def _pct(m, e=None) -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "—"
    return f"{100 * m:.2f}" + (f" ± {100 * e:.2f}" if e is not None and not math.isnan(e) and e > 0 else "")


def _qty(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    v = float(f"{v:.3g}")
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:g}"


def markdown(df: pd.DataFrame, overview: bool = True) -> str:
    """The comparison as Markdown tables (what README quotes), one block per dataset and network,
    after the overview across them (where there are several and ``overview``)."""
    mt, pt, sk = method_table(df), paired_table(df), skipped(df)
    lines = []
    ov = overview_table(mt, pt, sk) if overview else pd.DataFrame()
    if len(ov.columns) > 3:  # more than one network: the overview first
        nets = [c for c in ov.columns if c not in ("method", "mean")]
        lines += ["**Overview** (test accuracy %, mean over seeds, at each method's best T chosen on validation; "
                  "**bold**: no other method beats it on that network, i.e. no paired 95 % interval excludes zero "
                  "in another's favour)", "",
                  "| method | " + " | ".join(nets) + " |", "|---|" + "---|" * len(nets)]
        for _, r in ov.iterrows():
            cells = [overview_cell(r[n]) for n in nets]
            lines.append(f"| {r['method']} | " + " | ".join(f"**{t}**" if top and t else t for t, top in cells) + " |")
        lines.append("")
    for (dataset, arch), g in mt.groupby(["dataset", "arch"], sort=True):
        n = int(g["seeds"].max())
        lines += [f"**{dataset} / {arch}** (test accuracy %, mean ± 95 % CI over {n} seeds; best T chosen on "
                  "validation)", "",
                  "| method | T=4 | T=16 | best T | at best T | SynOps | energy (nJ) | training (s) |",
                  "|---|---|---|---|---|---|---|---|"]
        for _, r in g.sort_values("acc_best", ascending=False).iterrows():
            bt = "—" if r["best_T"] is None or (isinstance(r["best_T"], float) and math.isnan(r["best_T"])) \
                else str(int(r["best_T"]))
            lines.append(f"| {r['method']} | {_pct(r['acc_T4'], r['acc_T4_ci'])} | {_pct(r['acc_T16'], r['acc_T16_ci'])} "
                         f"| {bt} | {_pct(r['acc_best'], r['acc_best_ci'])} | {_qty(r['synops'])} "
                         f"| {_qty(r['energy_pj'] / 1e3 if r['energy_pj'] == r['energy_pj'] else math.nan)} "
                         f"| {_qty(r['train_time_s'])} |")
        p = pt[(pt["dataset"] == dataset) & (pt["arch"] == arch)] if len(pt) else pt
        shown = p[~p["verdict"].isin(["no difference shown", "no common seeds"])] if len(p) else p
        if len(p):
            lines += ["", f"Paired differences at best T ({len(shown)} of {len(p)} pairs with an interval that "
                          "excludes zero):" if len(shown) else
                      ("Paired differences at best T: the one pair's interval includes zero." if len(p) == 1 else
                       f"Paired differences at best T: none of the {len(p)} pairs has an interval that excludes zero.")]
            for _, r in shown.iterrows():
                lines.append(f"- {r['verdict']}: {100 * abs(r['diff']):.2f} points "
                             f"(95 % CI {100 * abs(r['diff']) - 100 * r['ci95']:.2f} to "
                             f"{100 * abs(r['diff']) + 100 * r['ci95']:.2f}, {r['seeds']} seeds)")
        s = sk[(sk["dataset"] == dataset) & (sk["arch"] == arch)] if len(sk) else sk
        for _, r in s.iterrows():
            lines.append(f"- {r['rule']}: skipped ({r['reason']})")
        lines.append("")
    return "\n".join(lines)


def _arch_specs(df: pd.DataFrame) -> dict:
    """``arch -> extra.arch_spec`` for the rows whose spec has a depth (the resnet family)."""
    out = {}
    for arch, e in zip(df["arch"], df["extra"] if "extra" in df else [None] * len(df)):
        spec = e.get("arch_spec") if isinstance(e, dict) else None
        if isinstance(spec, dict) and spec.get("depth"):
            out[arch] = spec
    return out


def depth_table(df: pd.DataFrame) -> pd.DataFrame:
    """:func:`method_table` of the rows on depth-family networks, with each network's ``depth``,
    ``residual`` and ``batch_norm`` and the first/last weight-gradient norm ratio of the first
    epoch (``grad_ratio``, geometric mean over seeds; > 1: gradients grow towards the input)."""
    ok = df[df["status"] == "ok"]
    specs = _arch_specs(ok)
    deep = ok[ok["arch"].isin(specs)]
    if deep.empty:
        return pd.DataFrame()
    mt = method_table(deep)
    ratios = {}
    for dataset, arch, method, g in methods(deep):
        first = []
        for e in g.drop_duplicates("cell_id")["extra"]:
            h = e.get("history") if isinstance(e, dict) else None
            v = (h or [{}])[0].get("grad_norm_ratio")
            if isinstance(v, (int, float)) and v > 0 and math.isfinite(v):
                first.append(v)
        ratios[(dataset, arch, method)] = math.exp(sum(map(math.log, first)) / len(first)) if first else math.nan
    mt["depth"] = [int(specs[a]["depth"]) for a in mt["arch"]]
    mt["width"] = [specs[a].get("width") for a in mt["arch"]]
    mt["residual"] = [bool(specs[a].get("residual")) for a in mt["arch"]]
    mt["batch_norm"] = [bool(specs[a].get("batch_norm", True)) for a in mt["arch"]]
    mt["grad_ratio"] = [ratios.get(k, math.nan) for k in zip(mt["dataset"], mt["arch"], mt["method"])]
    return mt


def accuracy_by_network(df: pd.DataFrame) -> dict:
    """Per (dataset, method, depth, width, batch_norm, residual) of the depth-family rows: the
    network's name and its test accuracy by seed at the method's best T (chosen on validation)."""
    ok = df[df["status"] == "ok"]
    specs = _arch_specs(ok)
    per = {}
    for dataset, arch, method, g in methods(ok[ok["arch"].isin(specs)]):
        best = _accuracy_by_seed(g)
        if best is not None:
            s = specs[arch]
            per[(dataset, method, int(s["depth"]), s.get("width"), bool(s.get("batch_norm", True)),
                 bool(s.get("residual")))] = (arch, best[1])
    return per


def _pairs(per: dict, pairs, verdicts: dict) -> pd.DataFrame:
    """Paired differences by seed (:func:`suite.stats.paired_difference`) of ``(row, key_A,
    key_B)`` from ``pairs``, ``row`` holding the columns that name the pair."""
    out = []
    for row, a, b in pairs:
        d = paired_difference(per[a][1], per[b][1])
        out.append({**row, "seeds": d["n"], "diff": d["mean"], "ci95": d["ci95"],
                    "verdict": verdicts.get(d["verdict"], d["verdict"])})
    return pd.DataFrame(out)


def _order(key) -> tuple:
    dataset, method, depth, width, bn, res = key
    return dataset, method, depth, str(width), not bn, not res


def residual_pairs(df: pd.DataFrame, per: dict | None = None) -> pd.DataFrame:
    """Residual minus plain twin of the same depth, width and BN, per dataset and method, each
    at its own best T (chosen on validation), paired by seed (:func:`suite.stats.paired_difference`).
    ``per``: :func:`accuracy_by_network` of ``df``, where the caller has it already."""
    per = accuracy_by_network(df) if per is None else per
    pairs = [({"dataset": k[0], "method": k[1], "depth": k[2], "batch_norm": k[4], "residual": per[k][0],
               "plain": per[k[:5] + (False,)][0]}, k, k[:5] + (False,))
             for k in sorted(per, key=_order) if k[5] and k[:5] + (False,) in per]
    return _pairs(per, pairs, {"A > B": "residual > plain", "A < B": "plain > residual"})


def depth_pairs(df: pd.DataFrame, per: dict | None = None) -> pd.DataFrame:
    """Each deeper network minus the shallowest of its kind (same method, residual or plain,
    width and BN), per dataset, each at its own best T (chosen on validation), paired by seed:
    does depth pay? ``per``: as for :func:`residual_pairs`."""
    per = accuracy_by_network(df) if per is None else per
    shallowest = {}
    for k in per:
        kind = (k[0], k[1], k[3], k[4], k[5])
        shallowest[kind] = min(shallowest.get(kind, k[2]), k[2])
    pairs = []
    for k in sorted(per, key=lambda k: (k[0], k[1], not k[5], not k[4], str(k[3]), k[2])):
        base = (k[0], k[1], shallowest[(k[0], k[1], k[3], k[4], k[5])], k[3], k[4], k[5])
        if base[2] < k[2]:
            pairs.append(({"dataset": k[0], "method": k[1], "residual": k[5], "batch_norm": k[4], "deeper": per[k][0],
                           "shallower": per[base][0], "depth": k[2], "base_depth": base[2]}, k, base))
    return _pairs(per, pairs, {"A > B": "deeper > shallower", "A < B": "shallower > deeper"})


def _pair_pp(r) -> str:
    """A paired difference in points with its interval, e.g. ``+10.00 (+7.52 to +12.48, 3 seeds)``."""
    if not r["seeds"] >= 2:
        return f"{100 * r['diff']:+.2f} ({r['seeds']} seed, no interval)"
    return (f"{100 * r['diff']:+.2f} ({100 * (r['diff'] - r['ci95']):+.2f} to "
            f"{100 * (r['diff'] + r['ci95']):+.2f}, {r['seeds']} seeds)")


def depth_markdown(df: pd.DataFrame) -> str:
    """The depth experiment as Markdown: per dataset, test accuracy at best T against depth for
    every method and kind of network, then residual minus plain and deeper minus shallower, paired
    by seed."""
    per = accuracy_by_network(df)
    dt, rp, dp = depth_table(df), residual_pairs(df, per), depth_pairs(df, per)
    if dt.empty:
        return "(no rows on depth-family networks)"
    lines = []
    for dataset, g in dt.groupby("dataset", sort=True):
        depths = sorted(g["depth"].unique())
        n = int(g["seeds"].max())
        lines += [f"**{dataset}: accuracy against depth** (test accuracy %, mean ± 95 % CI over {n} seeds unless "
                  "marked, at each "
                  "method's best T chosen on validation; grad ratio: first/last weight-gradient norm, first epoch)", "",
                  "| method | network | " + " | ".join(f"depth {d}" for d in depths) + " | grad ratio by depth |",
                  "|---|---|" + "---|" * (len(depths) + 1)]
        for (method, res, bn), h in g.groupby(["method", "residual", "batch_norm"], sort=True):
            by = {int(r["depth"]): r for _, r in h.iterrows()}
            cells = [(_pct(by[d]["acc_best"], by[d]["acc_best_ci"])
                      + (f" ({by[d]['seeds']} seed{'s' if by[d]['seeds'] > 1 else ''})" if by[d]["seeds"] < n else ""))
                     if d in by else "" for d in depths]
            ratios = " / ".join(f"{by[d]['grad_ratio']:.2g}" if d in by and by[d]["grad_ratio"] == by[d]["grad_ratio"]
                                else "—" for d in depths)
            net = ("ResNet" if res else "plain") + ("" if bn else ", no BN")
            lines.append(f"| {method} | {net} | " + " | ".join(cells) + f" | {ratios} |")
        lines.append("")
        p = rp[rp["dataset"] == dataset] if len(rp) else rp
        if len(p):
            lines += ["Residual minus plain twin (points, paired by seed, 95 % CI):", ""]
            for _, r in p.iterrows():
                lines.append(f"- {r['method']}, depth {r['depth']}{'' if r['batch_norm'] else ', no BN'}: "
                             f"{_pair_pp(r)} -- {r['verdict']}")
            lines.append("")
        p = dp[dp["dataset"] == dataset] if len(dp) else dp
        if len(p):
            lines += ["Deeper minus the shallowest network of its kind (points, paired by seed, 95 % CI):", ""]
            for _, r in p.iterrows():
                net = ("ResNet" if r["residual"] else "plain") + ("" if r["batch_norm"] else ", no BN")
                lines.append(f"- {r['method']}, {net}: depth {r['depth']} minus {r['base_depth']}: "
                             f"{_pair_pp(r)} -- {r['verdict']}")
            lines.append("")
        # one rule at two settings (e.g. two surrogate widths) on the same network, paired by seed
        pt = paired_table(df[(df["dataset"] == dataset) & df["arch"].isin(set(g["arch"]))])
        same = pt[pt["rule_A"] == pt["rule_B"]] if len(pt) else pt
        if len(same):
            lines += ["One rule at two settings on the same network, first minus second (points, paired by seed, "
                      "95 % CI):", ""]
            order = {a: i for i, a in enumerate(g.sort_values(["depth", "residual", "batch_norm"], ascending=[True, False, False])["arch"])}
            for _, r in same.sort_values("arch", key=lambda s: s.map(order)).iterrows():
                lines.append(f"- {r['arch']}, {r['A']} minus {r['B']}: {_pair_pp(r)} -- {r['verdict']}")
            lines.append("")
    return "\n".join(lines)
