"""The one place params.yaml is read: typed groups, with the active preset's overrides applied."""

from __future__ import annotations

import copy
import math
import re
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

# the demo presets run offline on the tiny model (demo/); the others download their model.hf_repo
DEMO_PRESETS = ("demo", "demo_rnnt", "demo_ctc")
PRESETS = (*DEMO_PRESETS, "parakeet", "parakeet_v2", "parakeet_rnnt", "parakeet_ctc")
PARAMS_FILE = Path("params.yaml")
# model.layout (requant/layouts.py) -> whether requant/beam.py's search applies: it reads TDT's duration logits
BEAM_SEARCH = {"tdt": True, "rnnt": False, "ctc": False}


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
    """One held-out long clip, scored in a single pass (stages fetch_eval@<name> ... reference@<name>)."""

    name: str
    lang: str  # "en", "fr"; the demo's language-switching clip lists several: "en,fr"
    source: str | None  # None: a demo-only clip, skipped by the parakeet preset
    start_s: float
    crop_s: float
    demo_voice: str  # one espeak-ng voice per language in `lang`, comma-separated
    transcript: str | None = None  # a true transcript (the demo preset writes its own)
    demo_rate: float = 1.0  # speaking-rate factor of the synthesized speech
    demo_switch_every: int = 3  # sentences before a multi-language demo clip switches language

    @property
    def langs(self) -> list[str]:
        return self.lang.split(",")

    @property
    def voices(self) -> list[str]:
        return self.demo_voice.split(",")


@dataclass(frozen=True)
class CorpusParams:
    """The short-utterance corpus (stage corpus): FLEURS, the demo's synthesized one, or your manifest."""

    languages: list[str]  # FLEURS configs ("fr_fr"); the demo synthesizes the language of each prefix
    max_per_language: int  # cap per language, first rows in manifest order (0: all; the demo makes this many)
    local_dir: str  # a manifest.csv or manifest.jsonl here replaces the preset's corpus
    fleurs_repo: str
    fleurs_revision: str
    fleurs_split: str  # FLEURS file stem: "dev" is the validation split
    demo_voices: list[str]  # held-out espeak-ng voices, used in turn within each language


@dataclass(frozen=True)
class ModelParams:
    hf_repo: str
    hf_revision: str
    demo_dir: str
    layout: str = "tdt"  # tdt | rnnt | ctc (requant/layouts.py)


@dataclass(frozen=True)
class FetchParams:
    retries: int
    backoff_s: float
    timeout_s: float  # no data for this long: the attempt has stalled
    local_dir: str
    min_rate_kb_s: float  # a download slower than this over rate_window_s trickles: it fails
    rate_window_s: float
    attempt_timeout_s: float = 900.0  # wall clock of one download attempt, ffmpeg included: the last resort


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
class NbitsRecipe:
    """One weight-only MatMulNBits recipe (stage nbits@<name>)."""

    bits: int
    block_size: int
    symmetric: bool
    accuracy_level: int  # 0: the kernel's default (fp32 compute); 4: int8 activations at run time
    aware: bool = False  # activation-aware scaling searched on calibration windows first (requant/aware.py)
    gptq: bool = False  # GPTQ's error feedback on the calibration Hessians instead of round-to-nearest (requant/gptq.py)
    keep_8bit: int = 0  # mixed 4/8-bit: the MatMuls with the largest 4-bit output error stored in 8 bits


@dataclass(frozen=True)
class AwareParams:
    alphas: list[float]  # the grid of exponents searched per MatMul input; must hold 0 (round-to-nearest)
    rows: int  # calibration frames sampled per MatMul input for the search (drawn with `seed`)


@dataclass(frozen=True)
class GptqParams:
    damp: float  # added to the Hessian's diagonal, times its mean: keeps the inverse well conditioned
    hessian_mb: float  # the float64 Hessians accumulated in one pass over the windows (one at least)


@dataclass(frozen=True)
class DiagnoseParams:
    lengths_s: list[float]  # pass lengths cut from the longest calibration speech
    break_rel_error: float  # a MatMul "breaks" where its output's relative error exceeds this


@dataclass(frozen=True)
class MixedParams:
    keep_fp32: int  # the K MatMuls the diagnosis ranks worst for SmoothQuant int8 stay fp32


@dataclass(frozen=True)
class BeamParams:
    """TDT beam search (requant/beam.py). Defaults are NeMo's TDT MAES ones: beta 2, gamma 2.3, prefix
    alpha 1, score_norm on."""

    width: int = 4
    expansion_beta: int = 2  # candidates per hypothesis: width + beta best (token, duration) pairs
    expansion_gamma: float = 2.3  # ... pruned to those within gamma (log-probability) of the best one
    prefix_alpha: int = 1  # 1: merge the path through a one-token-shorter prefix on the same frame; 0: off
    score_norm: bool = True  # rank finished hypotheses by log-probability per token


@dataclass(frozen=True)
class BlockwiseParams:
    """The exact long-pass rewrites (stage blockwise: requant/attention.py, subsampling.py, frames.py)."""

    block: int  # queries per block: peak activations ~ heads x block x 2T floats per layer
    subsampling_block: int  # encoder frames per chunk of the convolutional subsampling
    max_rel_error: float  # the exactness gate, relative to the largest output
    gate_s: float = 120.0  # the longest pass the gate runs the unrewritten encoder on (its attention is T^2)
    pos_tolerance: float = 2e-3  # the stored positional table against NeMo's formula, before rows past it are computed
    quantized_share: float = 0.1  # int8 local attention: its error against the float encoder may grow this much
    frame_block: int = 4096  # encoder frames per block of the per-frame modules (feed-forward, conv)


@dataclass(frozen=True)
class LocalParams:
    """Local attention (variants fp32_local, int8_local): NeMo's rel_pos_local_attn."""

    context: list[int] | None  # [left, right] frames each frame attends to; None = full attention


@dataclass(frozen=True)
class CompareParams:
    """The heaviest comparisons, on only when listed (DVC makes their stages from these lists)."""

    longform: list[str]  # [] or ["all"]: stages longform_data@all and longform@all
    builds: list[str]  # [] or ["all"]: the comparison encoders, stages int8_compare@all, diagnose@all, int8_mixed@all
    rows: dict[str, str]  # comparison variant -> its folder (models/variants/<variant>): stage compare@<variant>


@dataclass(frozen=True)
class LongformParams:
    """Recordings past the 400 s cap (stage longform): one pass, or windows and segments as apps cut them."""

    variants: list[str]  # encoders compared (requant.asr.VARIANTS names without a rewrite of their own)
    modes: list[str]  # full, local, chunk<seconds>, vad
    overlap_s: float  # between neighbouring windows of the chunk modes
    merge_gap_s: float  # a word two windows place this close to each other is one word
    vad_max_speech_s: float  # voice-activity segments longer than this are split (what one pass may take)
    vad_speech_pad_ms: float  # audio kept on each side of a segment
    vad_min_silence_ms: float  # a pause shorter than this does not end a segment
    max_s: float  # the longest long-form clip


@dataclass(frozen=True)
class LeaderboardSet:
    """One of the Open ASR Leaderboard's long-form sets: parquet files of a Hugging Face dataset repo."""

    name: str
    repo: str
    revision: str
    files: str  # glob of the split's parquet files inside the repo, e.g. earnings21/test-*.parquet


@dataclass(frozen=True)
class LeaderboardParams:
    """The leaderboard's long-form track (stages leaderboard_data, leaderboard)."""

    recordings: int  # per set, the first N recordings in the files' order; 0: the track is not run
    context: list[int]  # local attention [left, right] of every pass, as the leaderboard runs NeMo models
    variants: list[str]
    max_s: float  # the longest recording one pass takes
    demo_minutes: float  # demo presets: each synthesized recording's length


@dataclass(frozen=True)
class FidelityParams:
    min_cosine: float


@dataclass(frozen=True)
class ShardParams:
    budget_mb: float
    allow_oversize: bool = False  # a tensor larger than the budget gets a shard of its own instead of an error


@dataclass(frozen=True)
class EvalParams:
    section_s: float
    max_s: float
    normalize: str
    decoder: str
    bootstrap_resamples: int = 2000  # paired bootstrap draws for each confidence interval
    bootstrap_seed: int = 0
    decodings: list[str] = ("greedy",)  # greedy | beam, each from the same encoder pass; the first is the headline
    engine: str = "local"  # local: this process; ray: Ray tasks on a cluster (requant/ray_engine.py, the ray group)
    corpus_shard: int = 64  # ray: utterances per corpus task, a multiple of the encoder batch (16): same batches


@dataclass(frozen=True)
class RayParams:
    """eval.engine: ray. The cluster, and how long and how often to try (docs/cluster.md)."""

    address: str | None = None  # host:port of the head's GCS, or ray://host:port; None: $RAY_ADDRESS, else local
    connect_timeout_s: float = 30.0  # the address must answer (TCP, then ray.init) within this: else one line
    max_retries: int = 3  # a task whose worker or node dies is run again this many times


@dataclass(frozen=True)
class Params:
    preset: str
    seed: int
    model: ModelParams
    speeches: dict[str, Speech]
    eval_clips: dict[str, EvalClip]
    longform_clips: dict[str, EvalClip]
    corpus: CorpusParams
    fetch: FetchParams
    audio: AudioParams
    windows: WindowsParams
    smooth: SmoothParams
    quant: QuantParams
    nbits: dict[str, NbitsRecipe]
    aware: AwareParams
    gptq: GptqParams
    diagnose: DiagnoseParams
    mixed: MixedParams
    beam: BeamParams
    blockwise: BlockwiseParams
    local: LocalParams
    longform: LongformParams
    leaderboard: LeaderboardParams
    leaderboard_sets: dict[str, LeaderboardSet]
    compare: CompareParams
    fidelity: FidelityParams
    shard: ShardParams
    eval: EvalParams
    ray: RayParams

    @property
    def is_demo(self) -> bool:
        return self.preset in DEMO_PRESETS

    def skips(self, clip: EvalClip) -> bool:
        """A demo-only clip (no source) under the parakeet preset: its stages write a 'skipped' marker."""
        return clip.source is None and not self.is_demo


GROUPS = {"model": ModelParams, "corpus": CorpusParams, "fetch": FetchParams, "audio": AudioParams,
          "windows": WindowsParams, "smooth": SmoothParams, "quant": QuantParams, "aware": AwareParams,
          "gptq": GptqParams, "diagnose": DiagnoseParams,
          "mixed": MixedParams, "beam": BeamParams, "blockwise": BlockwiseParams, "local": LocalParams,
          "longform": LongformParams, "leaderboard": LeaderboardParams,
          "fidelity": FidelityParams,
          "shard": ShardParams, "eval": EvalParams, "ray": RayParams}


KEY = re.compile(r"[A-Za-z0-9_-]+")
MODE = re.compile(r"full|local|vad|chunk[1-9][0-9]*")
_EXPECTED = {"float": "a finite number", "int": "an integer", "bool": "true or false", "str": "a non-empty string"}


def _value(value: Any, annotation: str, where: str) -> Any:
    """value checked (and ints widened to float) against a field's annotation: 'float', 'str | None', ..."""
    if value is None and annotation.endswith(" | None"):
        return None
    annotation = annotation.removesuffix(" | None") if annotation.startswith("list[") else annotation
    if annotation.startswith("list["):
        if not isinstance(value, list) or not value:
            raise ParamsError(f"params.yaml: {where} is {value!r}; it must be a non-empty list")
        return [_value(item, annotation[5:-1], f"{where}[{i}]") for i, item in enumerate(value)]
    kinds = [kind.strip() for kind in annotation.split("|")]
    if value is None and "None" in kinds:
        return None
    kind = next(k for k in kinds if k != "None")
    ok = {"float": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "bool": isinstance(value, bool), "str": isinstance(value, str) and value != ""}[kind]
    if not ok:
        raise ParamsError(f"params.yaml: {where} is {value!r}; it must be {_EXPECTED[kind]}")
    return float(value) if kind == "float" else value


def _group(cls: type, raw: Any, group: str) -> Any:
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: '{group}' must be a mapping of keys to values, found {raw!r}")
    names = {f.name for f in fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise ParamsError(f"params.yaml: unknown key(s) {sorted(unknown)} in '{group}'; expected {sorted(names)}")
    missing = sorted(f.name for f in fields(cls) if f.name not in raw and f.default is MISSING)
    if missing:
        raise ParamsError(f"params.yaml: group '{group}' lacks {', '.join(missing)}")
    return cls(**{name: _value(value, next(f.type for f in fields(cls) if f.name == name), f"{group}.{name}")
                  for name, value in raw.items()})


def _section(raw: dict[str, Any], name: str) -> Any:
    if name not in raw:
        raise ParamsError(f"params.yaml: the '{name}' group is missing; restore it from git (git checkout params.yaml)")
    return raw[name]


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


def preset_overrides(presets: dict[str, Any], name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset's overrides, after those of the preset it `extends` (a mapping kept plain: DVC's `-S` rewrite
    of params.yaml expands YAML anchors and merge keys)."""
    own = dict(presets.get(name) or {})
    base = own.pop("extends", None)
    if base is None:
        return own
    if base not in presets or base in seen:
        raise ParamsError(f"params.yaml: presets.{name}.extends names '{base}', "
                          f"{'a loop' if base in seen else 'no preset'}; name one of {', '.join(presets)}")
    return {**preset_overrides(presets, base, (*seen, name)), **own}


def _named(cls: type, raw: Any, group: str, empty: str) -> dict[str, Any]:
    """A mapping of names to entries of cls (speeches, eval_clips); each name becomes a DVC stage and a file."""
    if not isinstance(raw, dict) or not raw:
        raise ParamsError(f"params.yaml: {empty}")
    bad = [str(name) for name in raw if not KEY.fullmatch(str(name))]
    if bad:
        raise ParamsError(f"params.yaml: {group} key(s) {bad} may only hold letters, digits, '_' and '-' "
                          "(each names a DVC stage and a file); rename them")
    return {name: _group(cls, {"name": name, **(spec if isinstance(spec, dict) else {"?": spec})}, f"{group}.{name}")
            for name, spec in raw.items()}


def _compare(group: Any) -> CompareParams:
    """Not _group: its list and map may be empty."""
    from requant.variants import BUILT_ON_REQUEST

    if not isinstance(group, dict) or set(group) != {"longform", "builds", "rows"}:
        raise ParamsError("params.yaml: 'compare' must hold exactly 'longform' and 'builds' ([] or [all]) and "
                          "'rows' (a map)")
    for switch in ("longform", "builds"):
        if group[switch] not in ([], ["all"]):
            raise ParamsError(f"params.yaml: compare.{switch} is {group[switch]!r}; use [] (off) or [all]")
    rows = group["rows"]
    if not isinstance(rows, dict) or any(not KEY.fullmatch(str(name)) or folder != f"models/variants/{name}"
                                         for name, folder in rows.items()):
        raise ParamsError(f"params.yaml: compare.rows is {rows!r}; map each comparison variant to its folder, "
                          "as in {int8_mixed: models/variants/int8_mixed} (`make compare` lists them all)")
    unbuilt = [name for name in rows if name in BUILT_ON_REQUEST]
    if unbuilt and not group["builds"]:
        raise ParamsError(f"params.yaml: compare.rows lists {', '.join(unbuilt)}, built only with "
                          "compare.builds: [all]; add it (`make compare` sets both)")
    return CompareParams(longform=list(group["longform"]), builds=list(group["builds"]), rows=dict(rows))


def parse_params(raw: dict[str, Any]) -> Params:
    """Validate the raw params.yaml mapping and apply the active preset's overrides."""
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml: expected a mapping of groups at the top level; restore it from git")
    preset = raw.get("preset", "demo")
    if preset not in PRESETS:
        raise ParamsError(f"params.yaml: preset '{preset}' is unknown; use one of {', '.join(PRESETS)}")
    raw = apply_overrides(raw, preset_overrides(raw.get("presets") or {}, preset))
    speeches = _named(Speech, _section(raw, "speeches"), "speeches",
                      "'speeches' is empty; calibration needs at least one speech")
    eval_clips = _named(EvalClip, _section(raw, "eval_clips"), "eval_clips",
                        "'eval_clips' is empty; the evaluation needs at least one long clip")
    longform_clips = _named(EvalClip, _section(raw, "longform_clips"), "longform_clips",
                            "'longform_clips' is empty; the long-form comparison needs at least one recording")
    groups = {name: _group(cls, _section(raw, name), name) for name, cls in GROUPS.items()}
    leaderboard_sets = _named(LeaderboardSet, _section(raw, "leaderboard_sets"), "leaderboard_sets",
                              "'leaderboard_sets' is empty; list the long-form sets the leaderboard stages score")
    nbits_raw = _section(raw, "nbits")
    if not isinstance(nbits_raw, dict) or any(not KEY.fullmatch(str(name)) for name in nbits_raw):
        raise ParamsError("params.yaml: 'nbits' must map recipe names (letters, digits, '_', '-') to recipes")
    nbits = {name: _group(NbitsRecipe, spec, f"nbits.{name}") for name, spec in nbits_raw.items()}
    params = Params(preset=preset, seed=_value(raw.get("seed", 0), "int", "seed"), speeches=speeches,
                    eval_clips=eval_clips, longform_clips=longform_clips, leaderboard_sets=leaderboard_sets, nbits=nbits,
                    compare=_compare(_section(raw, "compare")), **groups)
    _check(params)
    return params


# (group.key, lowest, highest, lowest allowed itself): every number the stages divide by, loop over or
# hand to a library, checked here so that a stage run alone fails with the same line as under dvc repro
RANGES = (
    ("leaderboard.recordings", 0, 100000, True), ("leaderboard.max_s", 1, 86400, True),
    ("leaderboard.demo_minutes", 0, 120, False),
    ("fetch.retries", 0, 100, True), ("fetch.backoff_s", 0, 3600, True), ("fetch.timeout_s", 0, 3600, False),
    ("fetch.attempt_timeout_s", 0, 86400, False), ("fetch.min_rate_kb_s", 0, 1e6, True),
    ("fetch.rate_window_s", 0, 3600, False), ("audio.sample_rate", 16000, 16000, True),
    ("windows.window_s", 0, 400, False), ("windows.count", 1, 100000, True),
    ("windows.heldout_per_speaker", 0, 1000, True), ("smooth.alpha", 0, 1, True),
    ("quant.percentile", 0, 100, False), ("quant.calib_windows", 0, 100000, True),
    ("fidelity.min_cosine", -1, 1, True), ("diagnose.break_rel_error", 0, 10, False),
    ("mixed.keep_fp32", 0, 100000, True), ("shard.budget_mb", 0, 1e9, False),
    ("eval.section_s", 0, 400, False), ("eval.max_s", 0, 400, False),
    ("eval.bootstrap_resamples", 100, 10**6, True), ("corpus.max_per_language", 0, 10**6, True),
    ("beam.width", 1, 64, True), ("beam.expansion_beta", 0, 64, True), ("beam.expansion_gamma", 0, 100, False),
    ("beam.prefix_alpha", 0, 1, True), ("blockwise.block", 1, 100000, True),
    ("blockwise.subsampling_block", 1, 100000, True), ("blockwise.frame_block", 1, 1000000, True), ("blockwise.max_rel_error", 0, 1, False),
    ("blockwise.pos_tolerance", 0, 1, False), ("longform.overlap_s", 0, 60, True),
    ("longform.merge_gap_s", 0, 5, True), ("longform.vad_max_speech_s", 1, 400, True),
    ("longform.vad_speech_pad_ms", 0, 5000, True), ("longform.vad_min_silence_ms", 0, 10000, True),
    ("longform.max_s", 0, 4 * 3600, False), ("blockwise.quantized_share", 0, 1, True),
    ("eval.corpus_shard", 16, 10**6, True), ("ray.connect_timeout_s", 0, 3600, False),
    ("ray.max_retries", 0, 100, True),
)


def _check_ranges(p: Params) -> None:
    for dotted, low, high, low_ok in RANGES:
        group, key = dotted.split(".")
        value = getattr(getattr(p, group), key)
        if not ((value >= low if low_ok else value > low) and value <= high):
            raise ParamsError(f"params.yaml: {dotted}={value} must be {'>=' if low_ok else '>'} {low:g} "
                              f"and <= {high:g}")
    if any(not MODE.fullmatch(mode) for mode in p.longform.modes) or not 0 <= p.longform.overlap_s < min(
            [int(m[5:]) for m in p.longform.modes if m.startswith("chunk")] or [math.inf]):
        raise ParamsError(f"params.yaml: longform.modes={p.longform.modes} (overlap_s={p.longform.overlap_s:g}): use "
                          "full, local, vad and chunk<seconds> (chunk30), each window longer than the overlap")
    for clip in p.longform_clips.values():
        if not 0 < clip.crop_s <= p.longform.max_s:
            raise ParamsError(f"params.yaml: longform_clips.{clip.name}.crop_s={clip.crop_s:g} must lie in "
                              f"(0, longform.max_s={p.longform.max_s:g}]")
    for where, context in (("local.context", p.local.context), ("leaderboard.context", p.leaderboard.context)):
        if context is not None and (len(context) != 2 or min(context) < 0 or max(context) < 1):
            raise ParamsError(f"params.yaml: {where}={context} must be [left, right], frames >= 0 (not both 0)"
                              f"{', or null for full attention' if where == 'local.context' else ''}")
    if any(not 0 < s <= 400 for s in p.diagnose.lengths_s):
        raise ParamsError(f"params.yaml: diagnose.lengths_s={p.diagnose.lengths_s} must lie in (0, 400] s")
    for name, recipe in p.nbits.items():
        if recipe.bits not in (4, 8) or recipe.block_size < 16 or recipe.block_size & (recipe.block_size - 1):
            raise ParamsError(f"params.yaml: nbits.{name} needs bits 4 or 8 and a block_size that is a power of "
                              f"two >= 16 (found {recipe.bits} and {recipe.block_size})")
        if recipe.accuracy_level not in (0, 1, 2, 3, 4):
            raise ParamsError(f"params.yaml: nbits.{name}.accuracy_level={recipe.accuracy_level}; use 0 to 4")
        if (recipe.gptq or recipe.keep_8bit) and recipe.block_size > 128:
            raise ParamsError(f"params.yaml: nbits.{name}: gptq and keep_8bit take a block_size of at most 128 "
                              f"(found {recipe.block_size})")
        if recipe.keep_8bit < 0 or (recipe.keep_8bit and recipe.bits != 4):
            raise ParamsError(f"params.yaml: nbits.{name}.keep_8bit={recipe.keep_8bit} needs bits 4 and a count >= 0")
    if not 0 <= p.gptq.damp <= 1 or p.gptq.hessian_mb <= 0:
        raise ParamsError(f"params.yaml: gptq.damp={p.gptq.damp} must lie in [0, 1] and gptq.hessian_mb="
                          f"{p.gptq.hessian_mb} be > 0")
    if 0 not in p.aware.alphas or any(not 0 <= a <= 1 for a in p.aware.alphas) or p.aware.rows < 1:
        raise ParamsError(f"params.yaml: aware.alphas={p.aware.alphas} must lie in [0, 1] and hold 0 "
                          f"(round-to-nearest), and aware.rows={p.aware.rows} must be >= 1")
    for clip in [*p.speeches.values(), *p.eval_clips.values()]:
        where = f"{'speeches' if isinstance(clip, Speech) else 'eval_clips'}.{clip.name}"
        if clip.start_s < 0 or clip.crop_s <= 0:
            raise ParamsError(f"params.yaml: {where} needs start_s >= 0 and crop_s > 0 "
                              f"(found {clip.start_s:g} and {clip.crop_s:g})")


def _check_eval_clips(p: Params) -> None:
    calibration_sources = {s.source for s in p.speeches.values()}
    for clip in p.eval_clips.values():
        where = f"eval_clips.{clip.name}"
        if clip.crop_s > p.eval.max_s:
            raise ParamsError(f"params.yaml: {where}.crop_s={clip.crop_s} exceeds eval.max_s={p.eval.max_s} "
                              "(Parakeet's positional table caps one pass at 400 s); shorten the crop")
        if clip.source is not None and clip.source in calibration_sources:
            raise ParamsError(f"params.yaml: {where}: '{clip.source}' is also a calibration speech; the evaluation "
                              "must stay held out, so pick another clip or drop that speech")
        if len(clip.langs) != len(clip.voices):
            raise ParamsError(f"params.yaml: {where} lists {len(clip.langs)} language(s) ({clip.lang}) but "
                              f"{len(clip.voices)} demo voice(s) ({clip.demo_voice}); give one voice per language")
        if not 0.5 <= clip.demo_rate <= 2.0 or clip.demo_switch_every < 1:
            raise ParamsError(f"params.yaml: {where} needs demo_rate in [0.5, 2] and demo_switch_every >= 1")


def _check(p: Params) -> None:
    _check_ranges(p)
    if p.eval.decoder not in ("fp32", "int8", "fp16"):
        raise ParamsError(f"params.yaml: eval.decoder='{p.eval.decoder}'; use fp32, int8 or fp16")
    _check_eval_clips(p)
    if set(p.eval.decodings) - {"greedy", "beam"} or len(set(p.eval.decodings)) != len(p.eval.decodings):
        raise ParamsError(f"params.yaml: eval.decodings={p.eval.decodings}; list greedy and/or beam, once each")
    if p.model.layout not in BEAM_SEARCH:
        raise ParamsError(f"params.yaml: model.layout='{p.model.layout}'; use one of {', '.join(BEAM_SEARCH)}")
    if "beam" in p.eval.decodings and not BEAM_SEARCH[p.model.layout]:
        raise ParamsError(f"params.yaml: eval.decodings lists beam, but the beam search is TDT's and model.layout is "
                          f"'{p.model.layout}'; use [greedy] (the {p.model.layout} presets do)")
    if p.eval.normalize not in ("raw", "lower_nopunct", "chars"):
        raise ParamsError(f"params.yaml: eval.normalize='{p.eval.normalize}'; use raw, lower_nopunct or chars")
    if p.eval.engine not in ("local", "ray"):
        raise ParamsError(f"params.yaml: eval.engine='{p.eval.engine}'; use local or ray")
    if p.eval.corpus_shard % 16:  # requant.evaluation.CORPUS_BATCH: other batches pad differently, other numbers
        raise ParamsError(f"params.yaml: eval.corpus_shard={p.eval.corpus_shard} must be a multiple of 16 "
                          "(the encoder's batch), so that each task's batches are the local engine's")


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read params.yaml (the preset's overrides applied); raise ParamsError with a clear message."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found; run from the repository root")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where} ({getattr(err, 'problem', None) or err}); "
                          "fix it or restore it from git") from None
    return parse_params(raw)
