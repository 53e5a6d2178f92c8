"""Stage `windows`: 30 s calibration windows spread evenly across speakers, plus a held-out set.

Each speech is cut into back-to-back windows. Per speaker, a seeded shuffle puts
`heldout_per_speaker` windows apart (split "heldout": fidelity checks, never calibrated on); the
calibration windows are then taken round-robin over the speakers (in a seeded order) until
`windows.count` are chosen, so a speaker that runs out simply leaves the rest to the others.
Outputs data/windows/windows.npy (float32 [N, window samples], calibration rows first) and
index.json ({"speaker", "start_s", "split"} per row).
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from requant.audio import audio_sha256, read_wav
from requant.common import atomic_path, fail, run_cli, write_json
from requant.evalsets import EVAL_AUDIO_DIR, clip_audio, scored_clips
from requant.params import load_params

log = logging.getLogger("pipeline.windows")
AUDIO_DIR, OUT_DIR = Path("data/audio"), Path("data/windows")


@dataclass(frozen=True)
class Window:
    speaker: str
    start_s: float
    split: str  # "calib" | "heldout"


def select_windows(
    lengths: dict[str, int], window: int, sample_rate: int, count: int, heldout_per_speaker: int, seed: int
) -> list[Window]:
    """Choose windows from speeches of the given sample counts; calibration rows first, then held-out."""
    rng = random.Random(f"windows:{seed}")
    pools: dict[str, list[int]] = {}
    heldout: list[Window] = []
    for speaker, samples in lengths.items():
        starts = list(range(0, samples - window + 1, window))
        if not starts:
            log.warning("speaker %s: %.1f s is shorter than one window; no windows", speaker, samples / sample_rate)
        rng.shuffle(starts)
        heldout += [Window(speaker, start / sample_rate, "heldout") for start in sorted(starts[:heldout_per_speaker])]
        pools[speaker] = starts[heldout_per_speaker:]
    order = list(pools)
    rng.shuffle(order)  # who gets the extra window when count is not a multiple of the speakers
    chosen: dict[str, list[int]] = {speaker: [] for speaker in lengths}
    taken = 0
    while taken < count and any(pools.values()):
        for speaker in order:
            if pools[speaker] and taken < count:
                chosen[speaker].append(pools[speaker].pop(0))
                taken += 1
    if taken == 0:
        fail(f"no calibration windows: every speech is shorter than {window / sample_rate:g} s plus the held-out set")
    if taken < count:
        log.warning("only %d calibration windows available (windows.count=%d)", taken, count)
    calib = [Window(s, start / sample_rate, "calib") for s in lengths for start in sorted(chosen[s])]
    return calib + heldout


def check_heldout(eval_audio_dir: Path, clips: list[str], speech_audio: dict[str, np.ndarray],
                  sample_rate: int) -> None:
    """Refuse an evaluation clip whose audio is identical to a calibration speech."""
    hashes = {audio_sha256(audio): speaker for speaker, audio in speech_audio.items()}
    for clip in scored_clips(clips, eval_audio_dir):
        speaker = hashes.get(audio_sha256(read_wav(clip_audio(clip, eval_audio_dir), sample_rate)))
        if speaker is not None:
            fail(f"evaluation clip '{clip}' has the same audio as calibration speech '{speaker}'; the "
                 "evaluation must stay held out: change eval_clips or drop that speech")


def build_windows(audio_dir: Path, speakers: list[str], out_dir: Path, *, eval_clips: list[str], window_s: float,
                  count: int, heldout_per_speaker: int, seed: int, sample_rate: int) -> list[Window]:
    """Read <audio_dir>/<speaker>.wav for each speaker and write windows.npy + index.json to out_dir.

    The evaluation clips' audio (<audio_dir>/eval/<clip>/) is only compared, never cut into windows."""
    audio = {}
    for speaker in speakers:
        path = audio_dir / f"{speaker}.wav"
        if not path.is_file():
            fail(f"{path} is missing; run the decode stage for speech '{speaker}' (dvc repro)")
        audio[speaker] = read_wav(path, sample_rate)
    check_heldout(audio_dir / EVAL_AUDIO_DIR.name, eval_clips, audio, sample_rate)
    window = round(window_s * sample_rate)
    rows = select_windows({s: len(a) for s, a in audio.items()}, window, sample_rate, count, heldout_per_speaker,
                          seed)
    array = np.stack([audio[w.speaker][round(w.start_s * sample_rate):][:window] for w in rows]).astype(np.float32)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        np.save(tmp / "windows.npy", array)
        write_json(tmp / "index.json", [asdict(w) for w in rows])
    log.info("%d calibration + %d held-out windows of %g s", sum(w.split == "calib" for w in rows),
             sum(w.split == "heldout" for w in rows), window_s)
    return rows


def main() -> None:
    p = load_params()
    build_windows(AUDIO_DIR, list(p.speeches), OUT_DIR, eval_clips=list(p.eval_clips), window_s=p.windows.window_s,
                  count=p.windows.count,
                  heldout_per_speaker=p.windows.heldout_per_speaker, seed=p.seed, sample_rate=p.audio.sample_rate)


if __name__ == "__main__":
    run_cli(main)
