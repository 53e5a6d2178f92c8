"""Params for tests: the repository's params.yaml with test-specific changes applied."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from requant.params import Params, parse_params

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"


def raw_params() -> dict[str, Any]:
    return yaml.safe_load(PARAMS_YAML.read_text())


def make_params(**groups: Any) -> Params:
    """parse_params of params.yaml with top-level keys (preset, speeches, fetch, ...) replaced or merged."""
    raw = copy.deepcopy(raw_params())
    for key, value in groups.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict) and key not in ("speeches", "eval_clips"):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return parse_params(raw)
