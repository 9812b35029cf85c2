"""The report's "Model metrics (NeuroBench)" section, from each row's ``extra["neurobench"]``."""
from __future__ import annotations

import pandas as pd


def section(df: pd.DataFrame, table, extra) -> list[str]:
    """``table`` and ``extra`` are the report's own table renderer and row-extra accessor."""
    ok = df[df["status"] == "ok"] if len(df) else df
    recs = []
    for _, row in ok.iterrows():
        nb = extra(row, "neurobench")
        if not nb:
            continue
        syn = nb.get("synaptic_operations") or {}
        recs.append({"dataset": row["dataset"], "arch": row["arch"], "rule": row["rule"], "backend": row["backend"],
                     "seed": row["seed"], "T": row["T"], "params": nb.get("parameter_count"),
                     "footprint": (nb.get("footprint_bytes") or 0) / 1024.0, "conn": nb.get("connection_sparsity"),
                     "act": nb.get("activation_sparsity"), "emacs": syn.get("Effective_MACs"),
                     "eacs": syn.get("Effective_ACs"), "dense": syn.get("Dense")})
    if not recs:
        return []
    t = pd.DataFrame(recs)
    t["T"] = pd.to_numeric(t["T"], errors="coerce")
    # one line per rule x dataset x arch x backend: its largest T, mean over seeds
    t = t[t["T"].isna() | (t["T"] == t.groupby(["dataset", "arch", "rule", "backend"])["T"].transform("max"))]
    t = t.groupby(["dataset", "arch", "rule", "backend"], dropna=False).agg(
        seeds=("seed", "nunique"), T=("T", "max"), params=("params", "mean"), footprint=("footprint", "mean"),
        conn=("conn", "mean"), act=("act", "mean"), emacs=("emacs", "mean"), eacs=("eacs", "mean"),
        dense=("dense", "mean")).reset_index()
    f0 = lambda v: f"{v:,.0f}"
    return ["<h2 id='neurobench'>Model metrics (NeuroBench)</h2>",
            "<p class='note'>Static metrics of the trained network as NeuroBench defines them (parameter count, "
            "footprint = bytes of parameters and buffers, connection sparsity = zero weights of Linear/Conv layers) "
            "and its dynamic ones at the largest T, per sample: activation sparsity and synaptic operations split "
            "into effective MACs and ACs (ours count every connection an event drives; NeuroBench counts non-zero "
            "weights only, the same when connection sparsity is 0) and dense operations. Mean over seeds.</p>",
            table(t, ["dataset", "arch", "rule", "backend", "seeds", "T", "params", "footprint", "conn", "act",
                       "emacs", "eacs", "dense"],
                   {"seeds": lambda v: f"{int(v)}", "T": lambda v: f"{int(v)}", "params": f0,
                    "footprint": lambda v: f"{v:,.1f}", "conn": lambda v: f"{v:.4f}", "act": lambda v: f"{v:.4f}",
                    "emacs": f0, "eacs": f0, "dense": f0},
                   {"params": "parameters", "footprint": "footprint (KiB)", "conn": "connection sparsity",
                    "act": "activation sparsity", "emacs": "Effective_MACs", "eacs": "Effective_ACs",
                    "dense": "Dense"})]
