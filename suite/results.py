"""Results store: one JSON Lines file per finished cell under ``DIR/cells/``.

Each cell file is written to a temporary name and renamed into place (atomic on POSIX), so an
interrupted run loses nothing already finished, parallel workers never share a file, and
result directories from several machines merge by copying. ``--resume`` skips cells whose file
exists with status ``ok``, ``nan`` or ``skipped`` (deterministic outcomes); ``failed`` cells are retried.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

#: 2: validation split (val_accuracy, val_split) and extra.history; 3: rows carry ``device`` and the
#: resolved hyper-parameters ``hp``. Rows of older versions still read (the new columns empty).
SCHEMA_VERSION = 3

#: row columns, in order (ARCHITECTURE.md's schema plus status, error and bookkeeping)
COLUMNS = [
    "rule", "paper", "dataset", "arch", "encoding", "backend", "T", "seed", "accuracy", "val_accuracy",
    "synops", "macs", "energy_pj", "spikes_per_sample", "train_time_s", "samples_per_s",
    "peak_mem_mb", "suite_version", "plugin_version", "config_hash", "status", "error",
    "epochs", "selected_epoch", "train_T", "n_train", "n_test", "val_split", "cell_id", "preset", "command", "finished_at",
    "device", "hp", "schema_version", "extra",
]
FINAL_STATUSES = ("ok", "nan", "skipped")


def cell_path(out_dir: Path, cell_id: str) -> Path:
    return Path(out_dir) / "cells" / f"{cell_id}.jsonl"


def write_atomic(path, save) -> Path:
    """Call ``save(tmp)`` to write a temporary file beside ``path``, flush it to disk, then rename it into
    place: readers never see half a file and an interrupted writer leaves nothing behind. The
    temporary name ends in ``.part``, so readers globbing ``cells/*.jsonl`` never pick it up."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix + ".part")
    os.close(fd)
    try:
        save(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_cell(out_dir: Path, cell_id: str, rows: list[dict]) -> Path:
    text = "".join(json.dumps({**row, "schema_version": SCHEMA_VERSION}, sort_keys=True, default=str) + "\n"
                   for row in rows)
    return write_atomic(cell_path(out_dir, cell_id), lambda tmp: Path(tmp).write_text(text))


def cell_done(out_dir: Path, cell_id: str) -> bool:
    path = cell_path(out_dir, cell_id)
    if not path.is_file():
        return False
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return bool(rows) and all(r.get("status") in FINAL_STATUSES for r in rows)


def read_rows(*dirs) -> list[dict]:
    """Rows from results directories (``DIR/cells/*.jsonl``) and result files (see :func:`read_file`)."""
    rows = []
    for d in dirs:
        d = Path(d)
        if d.is_file():
            rows.extend({**row, "source": str(d)} for row in read_file(d))
            continue
        files = sorted(f for f in (d / "cells").glob("*.jsonl") if not f.name.startswith(".")) if (d / "cells").is_dir() else []
        if not files and not d.is_dir():
            raise FileNotFoundError(f"{d}: no such results directory or file (expected a directory written by "
                                    f"`snn-suite run --out`, or a {', '.join(FILE_FORMATS)} file of result rows)")
        for f in files:
            rows.extend({**row, "source": str(d)} for row in _jsonl_rows(f))
    return rows


def _jsonl_rows(f: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(f.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{f}: line {n} is not valid JSON ({exc})") from exc
        rows.append(_check_schema(f, row))
    return rows


def _check_schema(f: Path, row: dict) -> dict:
    if (row.get("schema_version") or 0) > SCHEMA_VERSION:
        raise ValueError(f"{f}: schema_version {row['schema_version']} is newer than this suite's "
                         f"{SCHEMA_VERSION}; upgrade snn-suite")
    return row


FILE_FORMATS = (".csv", ".parquet", ".jsonl")
#: columns a file must have to be read as result rows
REQUIRED = ("rule", "dataset", "arch", "status")


def read_file(path: Path) -> list[dict]:
    """Rows of one result file in the row schema: CSV (``snn-suite results --csv``), Parquet, or
    JSON Lines (a cell file). Raises ValueError saying what is expected."""
    import pandas as pd  # here: writing rows (every run) needs no pandas

    path = Path(path)
    suffix = path.suffix.lower()
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet}
    if suffix == ".jsonl":
        rows = _jsonl_rows(path)
        columns = set().union(*rows)
    elif suffix in readers:
        try:
            df = readers[suffix](path)
        except Exception as exc:  # pandas / pyarrow parse errors
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ValueError(f"{path}: cannot be read as {suffix[1:]} ({type(exc).__name__}: {first})") from None
        columns = set(df.columns)
        rows = df.astype(object).where(df.notna(), None).to_dict("records")
    else:
        raise ValueError(f"{path}: not a result file; expected a results directory or a "
                         f"{', '.join(FILE_FORMATS)} file of result rows")
    missing = [c for c in REQUIRED if c not in columns]
    if rows and missing:
        raise ValueError(f"{path}: not result rows: no column(s) {', '.join(missing)} (expected the row schema "
                         f"of `snn-suite results --csv`: {', '.join(COLUMNS[:9])}, ...)")
    for row in rows:
        _check_schema(path, row)
        if isinstance(row.get("extra"), str):
            try:
                row["extra"] = json.loads(row["extra"])
            except json.JSONDecodeError:
                row["extra"] = None
    return rows


def read_frame(*dirs) -> pd.DataFrame:
    import pandas as pd

    rows = read_rows(*dirs)
    df = pd.DataFrame(rows)
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = None
    for c in ("T", "train_T", "seed", "epochs", "n_train", "n_test"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    extra = [c for c in df.columns if c not in COLUMNS]
    df = df[COLUMNS + extra]
    if len(df):
        df = df.sort_values(["dataset", "rule", "arch", "seed", "T"], na_position="first", kind="stable")
    return df.reset_index(drop=True)


def write_run_meta(out_dir: Path, meta: dict) -> None:
    """Append the run's command and environment to ``DIR/runs.jsonl`` (one line per invocation)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "runs.jsonl", "a") as f:
        f.write(json.dumps(meta, sort_keys=True, default=str) + "\n")
