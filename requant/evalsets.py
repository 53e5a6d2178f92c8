"""Where the evaluation sets live, and the short-utterance manifest (CSV or JSONL) they are read from.

Long clips: data/raw/eval/<clip>/ -> data/audio/eval/<clip>/audio.wav -> data/reference/<clip>/; a clip
skipped by the preset holds a skipped.json instead. Short utterances: data/corpus/manifest.jsonl, one
row per utterance: {"id", "lang", "audio" (relative to the manifest's folder), "text"}.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from requant.common import fail
from requant.params import KEY

RAW_EVAL_DIR = Path("data/raw/eval")
EVAL_AUDIO_DIR = Path("data/audio/eval")
REFERENCE_DIR = Path("data/reference")
LONGFORM_DIR = Path("data/longform")  # the long-form recordings: raw, audio and reference per clip
LEADERBOARD_DIR = Path("data/leaderboard")  # the leaderboard's long-form sets: <set>/<nnn>/, as LONGFORM_DIR's clips
SECTIONS_FILE, TRUTH_FILE = "sections.json", "truth.txt"  # in each clip's reference folder
CORPUS_DIR = Path("data/corpus")
CORPUS_MANIFEST = "manifest.jsonl"
SKIPPED = "skipped.json"
MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")
MANIFEST_FIELDS = ("audio", "text", "lang")


def clip_audio(name: str, eval_audio_dir: Path = EVAL_AUDIO_DIR) -> Path:
    return eval_audio_dir / name / "audio.wav"


def scored_clips(names: list[str], eval_audio_dir: Path = EVAL_AUDIO_DIR) -> list[str]:
    """The clips (in params order) whose audio exists; a skipped clip is left out, a missing one fails."""
    scored = []
    for name in names:
        if (eval_audio_dir / name / SKIPPED).is_file():
            continue
        if not clip_audio(name, eval_audio_dir).is_file():
            fail(f"{clip_audio(name, eval_audio_dir)} is missing; run `dvc repro decode_eval@{name}` first")
        scored.append(name)
    if not scored:
        fail("every evaluation clip is skipped by this preset; give at least one eval_clips entry a source")
    return scored


@dataclass(frozen=True)
class Utterance:
    id: str
    lang: str
    audio: Path  # absolute, or relative to the working directory
    text: str
    where: str = ""  # the manifest row, for error messages


def find_manifest(folder: Path) -> Path | None:
    """The user's manifest.csv or manifest.jsonl in folder, if any (not both)."""
    found = [folder / name for name in MANIFEST_NAMES if (folder / name).is_file()]
    if len(found) > 1:
        fail(f"{folder}: both {MANIFEST_NAMES[0]} and {MANIFEST_NAMES[1]}; keep one")
    return found[0] if found else None


def _rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) pairs: 'line N' of the file for each data row."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                fail(f"{path} line {number}: not valid JSON ({err.msg}); one object per line")
            if not isinstance(row, dict):
                fail(f"{path} line {number}: expected an object with {', '.join(MANIFEST_FIELDS)}")
            rows.append((f"line {number}", row))
        return rows
    reader = csv.DictReader(text.splitlines())
    missing = [f for f in MANIFEST_FIELDS if f not in (reader.fieldnames or [])]
    if missing:
        fail(f"{path}: the header lacks column(s) {', '.join(missing)}; the first line must name "
             f"{', '.join(MANIFEST_FIELDS)} (and optionally id)")
    return [(f"line {reader.line_num}", row) for row in reader]


def read_manifest(path: Path) -> list[Utterance]:
    """Every row of a CSV or JSONL manifest, checked; audio paths resolved against the manifest's folder."""
    if path.suffix not in (".csv", ".jsonl"):
        fail(f"{path}: a manifest is a .csv or .jsonl file")
    utterances, seen = [], set()
    for where, row in _rows(path):
        label = f"{path} {where}"
        audio, text, lang = (str(row.get(k) or "").strip() for k in MANIFEST_FIELDS)
        ident = str(row.get("id") or "").strip() or f"{lang}_{len(utterances):05d}"
        if not text:
            fail(f"{label}: the transcript (text) is empty; fill it in or drop the row")
        if not KEY.fullmatch(lang):
            fail(f"{label}: lang '{lang}' must be a code of letters, digits, '_' or '-' (e.g. fr_fr)")
        if not KEY.fullmatch(ident) or ident in seen:
            fail(f"{label}: id '{ident}' must be unique and hold only letters, digits, '_' or '-'")
        audio_path = path.parent / audio
        if not audio or not audio_path.is_file():
            fail(f"{label}: audio '{audio}' does not exist (paths are relative to {path.parent}/); "
                 "fix the path or drop the row")
        seen.add(ident)
        utterances.append(Utterance(ident, lang, audio_path, text, label))
    if not utterances:
        fail(f"{path}: no rows; add one per utterance ({', '.join(MANIFEST_FIELDS)})")
    return utterances


def read_corpus(root: Path = Path(".")) -> list[Utterance]:
    """The corpus stage's output (already checked and decoded to 16 kHz WAV)."""
    path = root / CORPUS_DIR / CORPUS_MANIFEST
    if not path.is_file():
        fail(f"{path} is missing; run `dvc repro corpus` first")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Utterance(r["id"], r["lang"], path.parent / r["audio"], r["text"]) for r in rows]
