"""What TDT beam search costs against greedy, measured side by side on the same encoder outputs.

    python -m bench.beam [--widths 4 10] [--variants fp32 int8_smoothquant] [--utterances 0]

After `dvc repro`: for each variant, the encoder runs once over the first long clip and once over the
corpus (in batches), and each decoding of those outputs is timed in turn, greedy first: the ratios do
not depend on how busy the machine is from one minute to the next as much as separate runs would.
Prints a table and writes metrics/bench_beam.json.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import jiwer

from requant.asr import assemble_model_dir, load_asr, load_clip, recognize_all
from requant.common import run_cli, write_json
from requant.evalsets import EVAL_AUDIO_DIR, clip_audio, read_corpus, scored_clips
from requant.params import load_params
from requant.scoring import normalize

log = logging.getLogger("bench.beam")
OUT = Path("metrics/bench_beam.json")
BATCH = 16


def measure(variant: str, widths: list[int], utterances: int) -> dict:
    params = load_params()
    decodings = {"greedy": None, **{f"beam{w}": replace(params.beam, width=w) for w in widths}}
    clip = scored_clips(list(params.eval_clips), EVAL_AUDIO_DIR)[0]
    corpus = read_corpus()[: utterances or None]
    with tempfile.TemporaryDirectory(prefix="bench-beam-") as folder:
        assemble_model_dir(variant, params.eval.decoder, Path(folder))
        asr = load_asr(Path(folder))
        audio = load_clip(clip_audio(clip), params.eval.max_s)
        long = recognize_all(asr, [audio], decodings)
        decode = dict.fromkeys(decodings, 0.0)
        texts: dict[str, list[str]] = {name: [] for name in decodings}
        for start in range(0, len(corpus), BATCH):
            batch = corpus[start : start + BATCH]
            found = recognize_all(asr, [load_clip(u.audio, params.eval.max_s) for u in batch], decodings)
            for name in decodings:
                decode[name] += found.decode_s[name]
                texts[name] += [t.text for t in found.transcripts[name]]
    truth = [" ".join(normalize(u.text, params.eval.normalize)) for u in corpus]
    return {
        "clip": clip, "clip_s": round(len(audio) / 16000, 1), "utterances": len(corpus),
        "encode_s": round(long.encode_s, 3),
        "decodings": {name: {"long_decode_s": round(long.decode_s[name], 3),
                             "long_ratio": round(long.decode_s[name] / long.decode_s["greedy"], 2),
                             "corpus_decode_s": round(decode[name], 3),
                             "corpus_ratio": round(decode[name] / decode["greedy"], 2),
                             "corpus_wer_pct": round(100 * jiwer.wer(
                                 truth, [" ".join(normalize(t, params.eval.normalize)) or "<empty>"
                                         for t in texts[name]]), 3)}
                      for name in decodings},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[4, 10])
    parser.add_argument("--variants", nargs="+", default=["fp32", "int8_smoothquant"])
    parser.add_argument("--utterances", type=int, default=0, help="corpus utterances to decode (0: all)")
    args = parser.parse_args()
    results = {v: measure(v, args.widths, args.utterances) for v in args.variants}
    write_json(OUT, results)
    print(f"{'variant':<18} {'decoding':<9} {'long decode s':>13} {'x greedy':>8} {'corpus decode s':>15} "
          f"{'x greedy':>8} {'corpus WER %':>12}")
    for variant, r in results.items():
        for name, d in r["decodings"].items():
            print(f"{variant:<18} {name:<9} {d['long_decode_s']:>13.2f} {d['long_ratio']:>8.2f} "
                  f"{d['corpus_decode_s']:>15.2f} {d['corpus_ratio']:>8.2f} {d['corpus_wer_pct']:>12.2f}")
    first = next(iter(results.values()))
    print(f"(long: clip '{first['clip']}', {first['clip_s']} s, encoder {first['encode_s']} s; "
          f"corpus: {first['utterances']} utterances)")


if __name__ == "__main__":
    run_cli(main)
