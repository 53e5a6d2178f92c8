"""The one place params.yaml is read: typed groups, with the active preset's overrides applied."""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

PRESETS = ("demo", "parakeet")
PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """A value in params.yaml that the pipeline cannot use."""


@dataclass(frozen=True)
class Speech:
    name: str
    lang: str
    source: str
    start_s: float
    crop_s: float
    demo_voice: str


@dataclass(frozen=True)
class EvalClip:
    lang: str
    source: str
    start_s: float
    crop_s: float
    demo_voice: str
    transcript: str | None = None
    name: str = "eval"


@dataclass(frozen=True)
class ModelParams:
    hf_repo: str
    hf_revision: str
    demo_dir: str


@dataclass(frozen=True)
class FetchParams:
    retries: int
    backoff_s: float
    timeout_s: float
    local_dir: str


@dataclass(frozen=True)
class AudioParams:
    sample_rate: int


@dataclass(frozen=True)
class WindowsParams:
    window_s: float
    count: int
    heldout_per_speaker: int


@dataclass(frozen=True)
class SmoothParams:
    alpha: float


@dataclass(frozen=True)
class QuantParams:
    percentile: float
    calib_windows: int
    reduce_range: bool = True


@dataclass(frozen=True)
class FidelityParams:
    min_cosine: float


@dataclass(frozen=True)
class ShardParams:
    budget_mb: float


@dataclass(frozen=True)
class EvalParams:
    section_s: float
    max_s: float
    normalize: str
    decoder: str


@dataclass(frozen=True)
class Params:
    preset: str
    seed: int
    model: ModelParams
    speeches: dict[str, Speech]
    eval_clip: EvalClip
    fetch: FetchParams
    audio: AudioParams
    windows: WindowsParams
    smooth: SmoothParams
    quant: QuantParams
    fidelity: FidelityParams
    shard: ShardParams
    eval: EvalParams

    @property
    def is_demo(self) -> bool:
        return self.preset == "demo"


def _group(cls: type, raw: dict[str, Any], group: str) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise ParamsError(f"params.yaml: unknown key(s) {sorted(unknown)} in '{group}'; expected {sorted(names)}")
    try:
        return cls(**raw)
    except TypeError as err:
        raise ParamsError(f"params.yaml: group '{group}' is incomplete ({err})") from None


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of raw with dotted keys ("shard.budget_mb") replaced by the overrides."""
    merged = copy.deepcopy(raw)
    for dotted, value in (overrides or {}).items():
        node = merged
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                raise ParamsError(f"params.yaml: preset override '{dotted}' names no existing group")
            node = node[key]
        if leaf not in node:
            raise ParamsError(f"params.yaml: preset override '{dotted}' names no existing key")
        node[leaf] = value
    return merged


def parse_params(raw: dict[str, Any]) -> Params:
    """Validate the raw params.yaml mapping and apply the active preset's overrides."""
    preset = raw.get("preset", "demo")
    if preset not in PRESETS:
        raise ParamsError(f"params.yaml: preset '{preset}' is unknown; use one of {', '.join(PRESETS)}")
    raw = apply_overrides(raw, (raw.get("presets") or {}).get(preset, {}))
    speeches = {
        name: _group(Speech, {"name": name, **spec}, f"speeches.{name}") for name, spec in raw["speeches"].items()
    }
    if not speeches:
        raise ParamsError("params.yaml: 'speeches' is empty; calibration needs at least one speech")
    params = Params(
        preset=preset,
        seed=int(raw.get("seed", 0)),
        model=_group(ModelParams, raw["model"], "model"),
        speeches=speeches,
        eval_clip=_group(EvalClip, raw["eval_clip"], "eval_clip"),
        fetch=_group(FetchParams, raw["fetch"], "fetch"),
        audio=_group(AudioParams, raw["audio"], "audio"),
        windows=_group(WindowsParams, raw["windows"], "windows"),
        smooth=_group(SmoothParams, raw["smooth"], "smooth"),
        quant=_group(QuantParams, raw["quant"], "quant"),
        fidelity=_group(FidelityParams, raw["fidelity"], "fidelity"),
        shard=_group(ShardParams, raw["shard"], "shard"),
        eval=_group(EvalParams, raw["eval"], "eval"),
    )
    _check(params)
    return params


def _check(p: Params) -> None:
    if not 0.0 <= p.smooth.alpha <= 1.0:
        raise ParamsError(f"params.yaml: smooth.alpha={p.smooth.alpha} is outside [0, 1]")
    if p.eval_clip.crop_s > p.eval.max_s:
        raise ParamsError(
            f"params.yaml: eval_clip.crop_s={p.eval_clip.crop_s} exceeds eval.max_s={p.eval.max_s} "
            "(Parakeet's positional table caps one pass at 400 s); shorten the crop"
        )
    calibration_sources = {s.source for s in p.speeches.values()}
    if p.eval_clip.source in calibration_sources:
        raise ParamsError(
            f"params.yaml: the evaluation clip '{p.eval_clip.source}' is also a calibration speech; "
            "the evaluation must stay held out, so pick another clip or drop that speech"
        )
    if p.windows.count < 1:
        raise ParamsError("params.yaml: windows.count must be at least 1 (the calibration set is empty)")
    if p.eval.normalize not in ("raw", "lower_nopunct"):
        raise ParamsError(f"params.yaml: eval.normalize='{p.eval.normalize}'; use raw or lower_nopunct")


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read params.yaml (the preset's overrides applied); raise ParamsError with a clear message."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found; run from the repository root")
    with path.open() as f:
        raw = yaml.safe_load(f)
    return parse_params(raw)
