"""`journey decisions export`: the online store's decisions with their outcomes, to a file.

The decision log that `journey features build --decisions` (logged-send labels), the off-policy evaluation
and the campaign report (`journey report`) read, from `Store.export_decisions`.
"""

from __future__ import annotations

from pathlib import Path

from serving.store import open_store

SQLITE = "sqlite:///"


def export_decision_log(store_url: str, out: Path) -> int:
    """Writes the store's decisions with their outcomes to `out` (.csv, else Parquet); returns how many.

    An export reads a store: a SQLite file that is not there is an error, not a new empty store.

    Raises:
        FileNotFoundError: no SQLite store at the URL's path. ValueError: a URL that names no store.
    """
    if store_url.startswith(SQLITE) and not Path(store_url.removeprefix(SQLITE)).exists():
        raise FileNotFoundError(f"no online store at {store_url.removeprefix(SQLITE)}")
    store = open_store(store_url)
    try:
        frame = store.export_decisions()
    finally:
        store.close()
    # Microsecond times, as the event contract and the simulator's decision log store them.
    frame["ts"] = frame["ts"].astype("datetime64[us, UTC]")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        frame.to_csv(out, index=False)
    else:
        frame.to_parquet(out, index=False)
    return len(frame)
