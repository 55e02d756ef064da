"""Settings files: YAML with dotted `--set key=value` overrides, and the check that names unknown keys.

The one loader behind every command that takes `--config FILE --set key=value` (features build, training,
the rules, the service).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml


def load_settings(path: Path | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """YAML settings (optional file) with dotted overrides applied, e.g. {"encoder.max_len": 30}.

    The one loader behind every `--config FILE --set key=value` command.
    """
    data: Any = (yaml.safe_load(path.read_text()) or {}) if path else {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings at the top, got a {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        target = data
        *parents, leaf = dotted.split(".")
        for depth, p in enumerate(parents):
            target = target.setdefault(p, {})
            if not isinstance(target, dict):
                section = ".".join(parents[: depth + 1])
                raise ValueError(f"setting {dotted}: {section} is a value ({target!r}), not a section")
        target[leaf] = value
    return data


def from_settings(kind: type, data: dict[str, Any], name: str) -> Any:
    """`kind(**data)`, naming any key `kind` does not have (the check behind every settings section)."""
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"unknown {name} setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return kind(**data)
