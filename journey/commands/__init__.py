"""The commands of `journey`, a module per stage of the flow, registered in `journey.cli`.

Each command is a few lines over library functions the notebooks call too; a user's mistake is raised by
the library as a typed error and shown as one line by `journey.errors.CommandGroup`.
"""

from __future__ import annotations

import yaml


def parse_overrides(pairs: list[str] | None) -> dict[str, object]:
    """`--set key=value` pairs as dotted overrides, each value read as YAML (`3`, `true`, `[1, 2]`).

    Raises:
        ValueError: a pair without `=`.
    """
    overrides: dict[str, object] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides
