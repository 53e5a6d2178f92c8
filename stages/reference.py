"""The fp32 reference: each section of the evaluation clip transcribed on its own, as a short clip.

Short clips are what every encoder handles well, so these transcripts are the yardstick the long
single pass of each variant is scored against (as in the original model card).
Output: data/reference/sections.json [{index, start_s, end_s, text}] and, when the clip has a true
transcript, data/reference/truth.txt.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from tqdm import tqdm

from requant.asr import SAMPLE_RATE, assemble_model_dir, load_asr, load_clip, transcribe
from requant.common import atomic_path, run_cli, write_json
from requant.params import load_params
from requant.scoring import make_sections

log = logging.getLogger("pipeline.reference")

AUDIO = Path("data/audio/eval.wav")
RAW_EVAL = Path("data/raw/eval")
OUT = Path("data/reference")
SECTIONS_FILE, TRUTH_FILE = "sections.json", "truth.txt"


def build_reference(
    audio_path: Path, raw_dir: Path, out_dir: Path, section_s: float, max_s: float, decoder: str, root: Path
) -> list[dict]:
    audio = load_clip(audio_path, max_s)
    sections = make_sections(len(audio) / SAMPLE_RATE, section_s)
    with tempfile.TemporaryDirectory(prefix="reference-model-") as model_dir:
        assemble_model_dir("fp32", decoder, Path(model_dir), root)
        asr = load_asr(Path(model_dir))
        rows = []
        for section in tqdm(sections, desc="fp32 reference sections", unit="section"):
            clip = audio[round(section.start_s * SAMPLE_RATE) : round(section.end_s * SAMPLE_RATE)]
            text = transcribe(asr, clip).text.strip()
            rows.append({"index": section.index, "start_s": section.start_s, "end_s": section.end_s, "text": text})
            log.info("section %s: %d words", section.label, len(text.split()))
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        write_json(tmp / SECTIONS_FILE, rows)
        truth = raw_dir / "transcript.txt"
        if truth.is_file():
            shutil.copyfile(truth, tmp / TRUTH_FILE)
        else:
            log.info("no true transcript in %s: WER against the truth will not be reported", raw_dir)
    return rows


def main() -> None:
    p = load_params()
    build_reference(AUDIO, RAW_EVAL, OUT, p.eval.section_s, p.eval.max_s, p.eval.decoder, Path("."))


if __name__ == "__main__":
    run_cli(main)
