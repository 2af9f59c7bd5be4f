"""Published reference numbers (``ablations/reference/paper.yaml``): reported, not reproduced.

Rows with metrics are shown beside ours, marked as reported with the test set they used; rows
without metrics are cells of the paper's tables that have not been transcribed (never guessed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from covidct_bench.errors import BenchError, first_invalid, reason

DEFAULT = Path(__file__).resolve().parents[2] / "ablations" / "reference" / "paper.yaml"


class ReferenceRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: str
    label: str | None = None
    short: str | None = Field(None, description="a short name for narrow tables (default: label)")
    cell: dict[str, Any] = {}
    accuracy: float | None = Field(None, ge=0, le=1)
    f1: float | None = Field(None, ge=0, le=1)
    auc: float | None = Field(None, ge=0, le=1)
    test_set: str | None = None
    transcribed_from: str | None = None

    @model_validator(mode="after")
    def _source(self) -> "ReferenceRow":
        if any(v is not None for v in (self.accuracy, self.f1, self.auc)) and not self.transcribed_from:
            raise ValueError("a row with numbers needs transcribed_from (where the numbers were read)")
        return self


class Reference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str
    positive_class: str = "covid"
    rows: list[ReferenceRow]


def load_reference(path: str | Path | None = None) -> Reference:
    path = Path(path) if path is not None else DEFAULT
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise BenchError(f"{path}: cannot read reference numbers ({reason(e)})") from None
    try:
        return Reference(**(data or {}))
    except (ValidationError, TypeError) as e:
        if isinstance(e, TypeError):
            raise BenchError(f"{path}: reference data is a mapping with source and rows") from None
        key, msg = first_invalid(e)
        raise BenchError(f"{path}: {key}: {msg.removeprefix('Value error, ')}") from None


def reference_table(table: str | None = None, path: str | Path | None = None) -> pd.DataFrame:
    """Rows of one table (or all) as a frame: table, label/cell, metrics, test_set, status."""
    ref = load_reference(path)
    rows = []
    for r in ref.rows:
        if table is not None and r.table not in (table, "baselines", "headline"):
            continue
        reported = any(v is not None for v in (r.accuracy, r.f1, r.auc))
        label = r.label or f"{r.table}: " + ",".join(f"{k}={v}" for k, v in r.cell.items())
        rows.append({"table": r.table, "label": label, "short": r.short or label,
                     **{f"ref_{k}": v for k, v in r.cell.items()}, "accuracy": r.accuracy, "f1": r.f1, "auc": r.auc,
                     "test_set": r.test_set, "source": r.transcribed_from,
                     "status": "reported, not reproduced" if reported else "not transcribed"})
    return pd.DataFrame(rows)
