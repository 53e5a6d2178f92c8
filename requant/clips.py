"""One audio clip from its source to its fp32 reference, as the data stages and longform_data take it.

- fetch: a calibration speech or evaluation clip into a folder with provenance.json: a local file copied,
  speech synthesized (the demo preset: the synthesizer is passed in, the library imports nothing above it)
  or the crop downloaded with yt-dlp (the parakeet preset). provenance.json records the source, the crop,
  where the crop starts inside the stored file (offset_s, applied by decode), its sha256, decoded duration
  and the tool versions.
- decode: that folder to a 16 kHz mono WAV of exactly round(crop_s * sample_rate) samples.
- build_reference: each section of a clip through fp32 on its own, as a short clip: the yardstick the long
  single pass of each variant is scored against.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from requant.asr import SAMPLE_RATE, assemble_model_dir, load_asr, load_clip, recognize_all
from requant.audio import check_audio, decode_audio, write_wav
from requant.common import StageError, atomic_path, fail, read_json, sha256_file, write_json
from requant.download import download_crop, source_url
from requant.evalsets import SECTIONS_FILE, SKIPPED, TRUTH_FILE, clip_audio
from requant.params import BeamParams, EvalClip, Params, Speech
from requant.scoring import make_sections

log = logging.getLogger("pipeline.clips")

RAW_DIR, AUDIO_DIR = Path("data/raw"), Path("data/audio")
# make_speech(lang, voice, duration_s, seed, text_seed_offset=, rate=, switch_every=) -> (audio, transcript)
Synthesizer = Callable[..., tuple[np.ndarray, str]]

# Demo text seeds: calibration speeches draw from [2^30, 2^30 + 2^29), the evaluation clip from the
# range above, so their sentences never come from the same seed; model training uses seeds < 2^30.
DEMO_SEED_BASE, EVAL_TEXT_OFFSET = 2**30, 2**29


def demo_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return DEMO_SEED_BASE + int.from_bytes(digest[:4], "little") % EVAL_TEXT_OFFSET


def local_file(name: str, local_dir: str | Path) -> Path | None:
    """The single file `<name>.<ext>` in local_dir, if any."""
    folder = Path(local_dir)
    matches = sorted(folder.glob(f"{name}.*")) if folder.is_dir() else []
    for path in matches:
        if path.is_symlink() and not path.exists():
            fail(f"{path}: a broken symbolic link (to '{os.readlink(path)}'); point it at the audio file or remove it")
        if not path.is_file():
            fail(f"{path}: not a regular file; put the speech's audio file there or remove it")
    if len(matches) > 1:
        fail(f"speech '{name}': several files match in {folder} ({', '.join(p.name for p in matches)}); keep one")
    return matches[0] if matches else None


def _tools(*packages: str) -> dict[str, str]:
    return {package: version(package) for package in packages}


def fetch(clip: Speech | EvalClip, params: Params, out_dir: Path, make_speech: Synthesizer | None = None) -> dict:
    """Write the audio for `clip` and its provenance.json into out_dir (atomically); return provenance.
    make_speech synthesizes what the demo preset (or a clip without a source) needs: demo.synth.make_speech."""
    label = f"evaluation clip '{clip.name}'" if isinstance(clip, EvalClip) else f"speech '{clip.name}'"
    local = local_file(clip.name, params.fetch.local_dir) if isinstance(clip, Speech) else None
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        provenance = {"name": clip.name, "preset": params.preset, "start_s": clip.start_s, "crop_s": clip.crop_s}
        if isinstance(clip, EvalClip) and params.skips(clip):
            provenance["skipped"] = "a demo-only clip (source: null); give it a source to score it here"
            write_json(tmp / "provenance.json", provenance)
            return provenance
        url = None if clip.source is None else source_url(clip.source, label)
        if clip.source is None or (params.is_demo and local is None and url is not None):
            if make_speech is None:
                fail(f"{label}: synthesized speech, but no synthesizer was given (demo.synth.make_speech)")
            provenance.update(_synthesize(clip, params, tmp, make_speech))
        elif local is not None or url is None:
            if local is None and "://" in clip.source:
                fail(f"{label}: source '{clip.source}' has an unsupported scheme; use youtube:<id>, "
                     "an http(s) URL or a local file path in params.yaml")
            provenance.update(_copy_local(local or Path(clip.source), clip, tmp, label))
        else:
            path = download_crop(url, tmp, clip.start_s, clip.crop_s, params.fetch, label)
            provenance.update(source=clip.source, file=path.name, offset_s=0.0,
                              tools=_tools("yt-dlp", "imageio-ffmpeg", "av", "soxr"))
        audio_path = tmp / provenance["file"]
        try:
            audio = decode_audio(audio_path, SAMPLE_RATE, provenance["offset_s"], clip.crop_s)
            check_audio(audio, str(audio_path))
        except StageError as err:  # name the speech and its source, never our temporary copy
            reason = str(err).removeprefix(f"{audio_path}: ").replace(str(audio_path), provenance["source"])
            fail(f"{label}: source '{provenance['source']}' {reason.replace(str(tmp), str(out_dir))}")
        provenance.update(sha256=sha256_file(audio_path), decoded_s=len(audio) / SAMPLE_RATE)
        if isinstance(clip, EvalClip) and clip.transcript:
            _copy_transcript(Path(clip.transcript), tmp, clip.name)
        write_json(tmp / "provenance.json", provenance)
    return provenance


def _copy_local(path: Path, clip: Speech | EvalClip, dest: Path, label: str) -> dict:
    if not path.is_file():
        fail(f"{label}: source '{path}' is neither youtube:<id>, an http(s) URL nor an existing file")
    target = dest / f"source{path.suffix.lower()}"
    shutil.copyfile(path, target)
    # the crop is applied by decode (offset_s); decoding here checks the file covers it
    return {"source": str(path), "file": target.name, "offset_s": clip.start_s, "tools": _tools("av", "soxr")}


def _synthesize(clip: Speech | EvalClip, params: Params, dest: Path, make_speech: Synthesizer) -> dict:
    seed = demo_seed(params.seed, clip.name)
    offset = EVAL_TEXT_OFFSET if isinstance(clip, EvalClip) else 0
    extra = {"rate": clip.demo_rate, "switch_every": clip.demo_switch_every} if isinstance(clip, EvalClip) else {}
    audio, transcript = make_speech(clip.lang, clip.demo_voice, clip.crop_s, seed, text_seed_offset=offset, **extra)
    sf.write(dest / "speech.flac", audio, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    if isinstance(clip, EvalClip):
        (dest / "transcript.txt").write_text(transcript + "\n")
    return {"source": f"espeak-ng:{clip.demo_voice}", "voice": clip.demo_voice, "seed": seed,
            "text_seed": seed + offset, "file": "speech.flac", "offset_s": 0.0,
            "tools": _tools("espeakng-loader", "soundfile", "av", "soxr")}


def _copy_transcript(path: Path, dest: Path, name: str) -> None:
    if not path.is_file():
        fail(f"eval_clips.{name}.transcript '{path}' does not exist; fix the path in params.yaml or set it to null")
    (dest / "transcript.txt").write_text(path.read_text(encoding="utf-8"), encoding="utf-8")


def decode(raw_dir: Path, out_wav: Path, sample_rate: int) -> int:
    """Decode the fetched clip in raw_dir to out_wav; return the number of samples written."""
    provenance_path = raw_dir / "provenance.json"
    if not provenance_path.is_file():
        fail(f"{provenance_path} is missing; run the fetch stage first (dvc repro)")
    provenance = read_json(provenance_path)
    source = raw_dir / provenance["file"]
    audio = decode_audio(source, sample_rate, float(provenance["offset_s"]), float(provenance["crop_s"]))
    check_audio(audio, str(source))
    with atomic_path(out_wav) as tmp:
        write_wav(tmp, audio, sample_rate)
    return len(audio)


def decode_eval_clip(raw_dir: Path, out_dir: Path, sample_rate: int) -> int:
    """An evaluation clip to out_dir/audio.wav, or out_dir/skipped.json; return the samples written."""
    provenance_path = raw_dir / "provenance.json"
    skipped = provenance_path.is_file() and "skipped" in read_json(provenance_path)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        if skipped:
            write_json(tmp / SKIPPED, read_json(provenance_path))
            return 0
        return decode(raw_dir, tmp / clip_audio(out_dir.name).name, sample_rate)


def build_reference(
    audio_path: Path, raw_dir: Path, out_dir: Path, section_s: float, max_s: float, decoder: str, root: Path,
    decodings: dict[str, BeamParams | None] | None = None,
) -> list[dict]:
    """Each section alone through fp32, under each decoding (default: greedy only)."""
    decodings = decodings or {"greedy": None}
    audio = load_clip(audio_path, max_s)
    sections = make_sections(len(audio) / SAMPLE_RATE, section_s)
    with tempfile.TemporaryDirectory(prefix="reference-model-") as model_dir:
        assemble_model_dir("fp32", decoder, Path(model_dir), root)
        asr = load_asr(Path(model_dir))
        rows = []
        for section in tqdm(sections, desc="fp32 reference sections", unit="section"):
            clip = audio[round(section.start_s * SAMPLE_RATE) : round(section.end_s * SAMPLE_RATE)]
            found = recognize_all(asr, [clip], decodings).transcripts
            texts = {name: found[name][0].text.strip() for name in decodings}
            rows.append({"index": section.index, "start_s": section.start_s, "end_s": section.end_s, "text": texts})
            log.info("section %s: %s words", section.label, {k: len(v.split()) for k, v in texts.items()})
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        write_json(tmp / SECTIONS_FILE, rows)
        truth = raw_dir / "transcript.txt"
        if truth.is_file():
            shutil.copyfile(truth, tmp / TRUTH_FILE)
        else:
            log.info("no true transcript in %s: WER against the truth will not be reported", raw_dir)
    return rows
