"""Stage `fetch`: one calibration speech -> data/raw/<name>/, or one evaluation clip -> data/raw/eval/<name>/.

Sources, in order: a file `<name>.<ext>` in fetch.local_dir (speeches only) or a local path given as
the source is copied; otherwise the demo preset synthesizes speech with espeak-ng and the parakeet
preset downloads the crop with yt-dlp (youtube:<id> or an http(s) URL); a demo-only evaluation clip
(no source) gets a provenance.json that says it is skipped under the parakeet preset. provenance.json records
the source, the crop, where the crop starts inside the stored file (offset_s, used by the decode
stage), its sha256 and decoded duration, and the tool versions.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
from importlib.metadata import version
from pathlib import Path

import soundfile as sf

from requant.audio import SAMPLE_RATE, check_audio, decode_audio
from requant.common import StageError, atomic_path, fail, run_cli, sha256_file, write_json
from requant.download import download_crop, source_url
from requant.evalsets import RAW_EVAL_DIR
from requant.params import EvalClip, Params, Speech, load_params

RAW_DIR = Path("data/raw")
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


def fetch(clip: Speech | EvalClip, params: Params, out_dir: Path) -> dict:
    """Write the audio for `clip` and its provenance.json into out_dir (atomically); return provenance."""
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
            provenance.update(_synthesize(clip, params, tmp))
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


def _synthesize(clip: Speech | EvalClip, params: Params, dest: Path) -> dict:
    from demo.synth import make_speech  # only the demo preset needs espeak-ng

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["speech", "eval"])
    parser.add_argument("name", help="the speech's (or evaluation clip's) key in params.yaml")
    params = load_params()  # first: a key that DVC split into two arguments is named by the params check
    args = parser.parse_args()
    clips = params.eval_clips if args.kind == "eval" else params.speeches
    group = "eval_clips" if args.kind == "eval" else "speeches"
    if args.name not in clips:
        fail(f"'{args.name}' is not in params.yaml {group} ({', '.join(clips)})")
    fetch(clips[args.name], params, (RAW_EVAL_DIR if args.kind == "eval" else RAW_DIR) / args.name)


if __name__ == "__main__":
    run_cli(main)
