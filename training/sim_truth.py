"""The simulator's truth joined to a features build's rows: the latent stage and the exact conversion
probability of every action at each logged decision (`training.evaluate` scores against them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.encoder import MS_PER_DAY
from features.schema import STAGES
from features.sim import LATENT_TO_STAGE
from training.data import FeatureData
from training.ope import load_decision_ids, true_conversion_matrix


@dataclass
class SimTruth:
    """The simulator's truth for one split, row-aligned with its FeatureData.

    Attributes:
        stage: (n,) the latent stage at the cutoff as an index into STAGES (lapsed -> at_risk), -1 unknown.
        p_convert: (n, len(ACTIONS)) exact conversion probability of each action at the row's decision,
            NaN where the row has no decision.
    """

    stage: np.ndarray
    p_convert: np.ndarray


def load_sim_truth(shop: Path, features: Path, split: str, data: FeatureData | None = None) -> SimTruth:
    """Joins a simulated shop's truth to a features build's rows.

    The latent stage of a row is the stage at the start of its cutoff's day (`truth/stages.parquet`); the
    conversion probabilities come from `truth/decisions.parquet` by the row's decision id.

    Args:
        shop: the simulator's output folder (with truth/).
        features: the features build made from it.
        split: "train", "valid" or "test".
        data: the split as loaded, to check that the rows line up.

    Raises:
        ValueError: the rows of the build differ from `data`.
    """
    rows = load_decision_ids(Path(features), split)
    customer = np.asarray(rows.column("customer_id").to_pylist(), dtype=object)
    cutoff_ms = rows.column("cutoff").cast(pa.int64()).to_numpy() // 1000
    if data is not None and not (
        len(customer) == len(data)
        and np.array_equal(customer, data.customer_id)
        and np.array_equal(cutoff_ms, data.cutoff_ms)
    ):
        raise ValueError(f"the rows of {features} ({split}) do not line up with the data given")
    p_convert = true_conversion_matrix(
        Path(shop) / "truth" / "decisions.parquet", np.asarray(rows.column("decision_id").to_pylist())
    )
    day = (cutoff_ms // MS_PER_DAY).astype("datetime64[D]")  # the cutoff's UTC day
    days = sorted({d.item() for d in np.unique(day)})
    stages = pq.read_table(
        Path(shop) / "truth" / "stages.parquet", filters=[("day", "in", days)] if days else None
    ).to_pandas()
    stages["customer_id"] = stages["customer_id"].astype(str)
    stages["day"] = stages["day"].to_numpy().astype("datetime64[D]")
    index = {s: i for i, s in enumerate(STAGES)}
    stages["stage"] = stages["stage"].astype(str).map(LATENT_TO_STAGE).map(index)
    keys = pd.DataFrame({"customer_id": customer.astype(str), "day": day})
    merged = keys.merge(stages, on=["customer_id", "day"], how="left", validate="many_to_one")
    stage = merged["stage"].fillna(-1).to_numpy().astype(np.int64)
    return SimTruth(stage=stage, p_convert=p_convert)
