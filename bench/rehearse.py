"""Dress rehearsal of the parakeet preset at full scale, offline: `make rehearse`.

The real parakeet-preset code path, every stage under `dvc repro`, on the Parakeet-size random twin:
- the twin sits in a Hugging Face cache as istupakov/parakeet-tdt-0.6b-v3-onnx at a revision that is
  not the pinned one (so base_model logs that sha256 sums are not checked), and HF_HUB_OFFLINE=1 makes
  huggingface_hub's snapshot_download really resolve it;
- the eight calibration speeches are local files in calibration_audio/ (synthesized, the preset's
  lengths), the evaluation clip a local 390 s file with its transcript.
Each stage runs on its own (`dvc repro --single-item`, in dvc.yaml's order) so that its wall time, the
peak RSS of its largest process and the disk used after it can be recorded. Per variant, the figures
of its evaluation (size; the long clip's load, encoder and decoding times, RSS) are read from metrics/eval/
and metrics/timing/. The summary goes
to metrics/rehearsal.json. The work folder (a copy of the project) is kept for inspection, and `--resume`
carries on in it after the last stage recorded (work/stages.json): a rehearsal takes hours on 2 cores.
The twin's decoder gets a blank bias (bench.twin.speech_rate_decoders) so that greedy and beam decoding
emit a real model's token rate; unbiased, its random joint emits ten tokens a frame and decoding, not the
encoder, would set the evaluation's time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import soundfile
import yaml

from bench.meter import machine
from requant.common import fail, read_json, run_cli, sha256_file, write_json

log = logging.getLogger("bench.rehearse")
ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "istupakov/parakeet-tdt-0.6b-v3-onnx"
REVISION = "deadbeef" * 5  # a commit hash that is not the pinned one: no sha256 pins apply
PROJECT = ("dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config", "requant", "stages", "demo", "bench")
STAGE_TIMEOUT_S = 3 * 3600  # diagnose takes over an hour at this size on 2 cores; three mean it hangs
CORPUS_UTTERANCES = 40  # French short utterances in eval_corpus/ (the stage would fetch FLEURS otherwise)
GB = 1e9
SKIPPED_S = 5.0  # `dvc repro --single-item` on a stage with nothing to do: dvc's own start-up, no work
DOC = ROOT / "docs" / "rehearsal.md"
# the largest descendant's peak RSS (KiB on Linux), measured around one command by a fresh interpreter
MEASURE = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
           "rc = subprocess.run(sys.argv[1:]).returncode; "
           "print(json.dumps({'rc': rc, 'wall_s': time.perf_counter() - t, "
           "'peak_rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")


def copy_project(repo: Path) -> None:
    for name in PROJECT:
        src, dst = ROOT / name, repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", ".work", "*.pyc"))
        else:
            shutil.copyfile(src, dst)
    (repo / "calibration_audio").mkdir()
    (repo / "eval_corpus").mkdir()
    (repo / "metrics").mkdir(exist_ok=True)
    from stages.report import BENCH_FIGURES  # the report's deps that benches write, kept in git

    # and the long-form figures, which only `make compare` writes: a real run has them from git (the report
    # then leaves them out, measured on other encoders)
    for path in (*BENCH_FIGURES, Path("metrics/longform.json")):
        shutil.copyfile(ROOT / path, repo / path)


def place_twin_in_hf_cache(twin: Path, hf_home: Path, repo_id: str = REPO_ID, revision: str = REVISION) -> Path:
    """The twin's files as a snapshot of repo_id@revision in a Hugging Face hub cache: content in
    blobs/<sha256>, the snapshot folder of symlinks to them, refs/main naming the revision."""
    repo_dir = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for path in sorted(twin.iterdir()):
        if path.is_file() and path.name != "twin.json":
            blob = repo_dir / "blobs" / sha256_file(path)
            shutil.move(path, blob)
            (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


def write_audio(repo: Path, params: dict, seed: int) -> None:
    """The calibration speeches into calibration_audio/, a 390 s evaluation clip with its text, and a
    French short-utterance manifest in eval_corpus/, all synthesized with demo voices (the evaluation's
    voices and sentences are not the speeches')."""
    from demo.synth import SAMPLE_RATE, make_speech, synthesize
    from demo.text import sentences

    for i, (name, speech) in enumerate(params["speeches"].items()):
        audio, _ = make_speech(speech["lang"], speech["demo_voice"], float(speech["crop_s"]), seed + i)
        soundfile.write(repo / "calibration_audio" / f"{name}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
    clip = params["eval_clips"]["jfk"]
    audio, text = make_speech(clip["lang"], clip["demo_voice"], float(clip["crop_s"]), seed + 100,
                              text_seed_offset=1000)
    soundfile.write(repo / "eval_clip.wav", audio, SAMPLE_RATE, subtype="PCM_16")
    (repo / "eval_clip.txt").write_text(text + "\n")
    rows = ["audio,text,lang"]
    for i, sentence in enumerate(sentences("fr", CORPUS_UTTERANCES, seed + 200)):
        soundfile.write(repo / "eval_corpus" / f"{i:03d}.wav", synthesize(sentence, "fr+f2"), SAMPLE_RATE)
        rows.append(f"{i:03d}.wav,{sentence},fr_fr")
    (repo / "eval_corpus" / "manifest.csv").write_text("\n".join(rows) + "\n")


def stage_order(repo: Path, env: dict[str, str]) -> list[str]:
    """Every stage in an order dvc can run one by one (dvc.yaml lists them upstream first)."""
    out = subprocess.run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def disk_bytes(folder: Path) -> int:
    """Bytes on disk under folder, each hard-linked file once (du -sb)."""
    return int(subprocess.run(["du", "-sb", str(folder)], capture_output=True, text=True, timeout=600,
                              check=True).stdout.split()[0])


def run_stage(repo: Path, env: dict[str, str], stage: str) -> tuple[dict, str]:
    """Run one stage; its wall time, largest process's peak RSS, disk used after it, and its stderr."""
    cmd = [sys.executable, "-c", MEASURE, sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    result = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=STAGE_TIMEOUT_S)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    if figures["rc"] != 0:
        fail(f"stage {stage} failed in {repo}: " + " | ".join(result.stderr.strip().splitlines()[-3:]))
    return {"wall_s": round(figures["wall_s"], 1), "peak_rss_gb": round(figures["peak_rss_kb"] * 1024 / GB, 2),
            "disk_gb": round(disk_bytes(repo.parent) / GB, 2),
            "cache_own_gb": round(unlinked_bytes(repo / ".dvc" / "cache") / GB, 2)}, result.stderr


def unlinked_bytes(folder: Path) -> int:
    """Bytes of the files under folder that nothing else links: what DVC's cache costs beyond the workspace
    (its hard-linked objects are the workspace's own files; a copy or an old version counts)."""
    return sum(st.st_size for f in folder.rglob("*") if f.is_file() and (st := f.stat()).st_nlink == 1) \
        if folder.is_dir() else 0


def build_twin(work: Path, seed: int, layers: int, layout: str = "tdt") -> dict:
    """The twin of the layout (with the stock int8 encoder) in work/twin, a transducer's decoder at a real token
    rate (a CTC head has no such knob: its random output costs next to nothing to decode)."""
    # in a child, so that the build's memory (7.8 GB for the stock int8) is not held through the stages
    subprocess.run([sys.executable, "-m", "bench.twin", "--out", str(work / "twin"), "--layers", str(layers),
                    "--seed", str(seed), "--stock-int8", "--layout", layout], cwd=ROOT, check=True,
                   timeout=STAGE_TIMEOUT_S)
    from bench.twin import DECODER, speech_rate_decoders
    from demo.synth import make_speech

    if layout == "ctc":
        return {**read_json(work / "twin" / "twin.json"), "blank_bias": None}
    rate = speech_rate_decoders(work / "twin", make_speech("en", "en-us+m3", 30.0, seed + 7)[0], work / "decoder")
    shutil.move(work / "decoder" / DECODER, work / "twin" / DECODER)
    return {**read_json(work / "twin" / "twin.json"), "blank_bias": rate["decoders"][DECODER]["blank_bias"]}


def preset_params(params: dict, preset: str, leaderboard_minutes: float, hf_home: Path, seed: int) -> dict:
    """params.yaml for the rehearsal: the preset, its model at the twin's revision, the comparisons off, and
    with leaderboard_minutes one synthesized recording of that length as the leaderboard's earnings-21 set, in
    its dataset layout in the hub cache (its code path at full length)."""
    from bench.hub_cache import recordings_parquet, write_repo
    from demo.synth import make_speech
    from requant.params import preset_overrides

    params["preset"] = preset
    params["compare"] = {"longform": [], "builds": [], "rows": {}}  # what a plain `dvc repro` runs
    if "model.hf_revision" in preset_overrides(params["presets"], preset):
        params["presets"][preset]["model.hf_revision"] = REVISION  # the preset's own override wins
    params["model"]["hf_revision"] = REVISION
    if leaderboard_minutes:
        spec = params["leaderboard_sets"]["earnings21"]
        recording = make_speech("en", "en-us+m3", leaderboard_minutes * 60, seed + 300, text_seed_offset=2000)
        write_repo(hf_home / "hub", "datasets", spec["repo"], REVISION,
                   {"earnings21/test-00000-of-00001.parquet": recordings_parquet([recording])})
        params["leaderboard_sets"] = {"earnings21": {**spec, "revision": REVISION}}
        params["presets"].setdefault(preset, {})["leaderboard.recordings"] = 1
    return params


def variant_figures(metrics: Path, clip: str = "jfk") -> dict[str, dict]:
    """Per evaluated variant, from its evaluation (metrics/eval/, metrics/timing/): size, and the long clip's
    session load, encoder time, decoding times, peak RSS and WER (meaningless on random weights)."""
    from requant.evaluation import TIMING_DIR, merge_timing

    variants = {}
    for path in sorted((metrics / "eval").glob("*.json")):
        report = merge_timing(read_json(path), read_json(metrics / TIMING_DIR.name / path.name))
        long = report["long"][clip]
        variants[path.stem] = {
            "encoder_mb": report["cost"]["encoder_mb"], "clip_s": long["duration_s"], "load_s": long["load_s"],
            "encode_s": long["encode_s"], **{f"{name}_decode_s": d["decode_s"] for name, d in long["by_decoding"].items()},
            "peak_rss_gb": round(long["peak_rss_mb"] / 1e3, 2),
            "overall_wer_pct": long["by_decoding"]["greedy"]["overall_wer_pct"],
            "corpus_wer_pct": {lang: c["wer_pct"] for lang, c in report.get("corpus", {}).get("greedy", {}).items()}}
    return variants


def run_comparisons(repo: Path, env: dict[str, str], done: dict, record: Path) -> list[str]:
    """After the default run: params.yaml's comparisons on, as `make compare` turns them on, and every stage
    that then runs (each already-done stage is skipped by dvc in a second), into done["compare_stages"]; return
    dvc.yaml's order with them on."""
    from bench.repro_time import turn_on_comparisons

    turn_on_comparisons(repo / "params.yaml")
    done.setdefault("compare_stages", {})
    order = stage_order(repo, env)
    for stage in order:
        if stage not in done["compare_stages"]:
            done["compare_stages"][stage], _ = run_stage(repo, env, stage)
            write_json(record, done)
            log.info("with the comparisons, %s: %s", stage, done["compare_stages"][stage])
    return order


def comparison_summary(done: dict, order: list[str]) -> dict:
    """What `make compare` adds to the default run: the stages that did work (a skipped one takes no time)."""
    ran = {s: f for s, f in done["compare_stages"].items() if f["wall_s"] >= SKIPPED_S or s not in done["stages"]}
    return {"total_s": round(sum(f["wall_s"] for f in ran.values()), 1),
            "peak_rss_gb": max((f["peak_rss_gb"] for f in ran.values()), default=0.0),
            "disk_gb": max(f["disk_gb"] for f in done["compare_stages"].values()),
            "stages": ran, "stage_order": [s for s in order if s in ran]}


def rehearse(work: Path, seed: int, layers: int, resume: bool, run_stages: bool = True,
             compare: bool = False, preset: str = "parakeet", leaderboard_minutes: float = 0.0) -> dict:
    """Run (or with run_stages=False only summarize) the rehearsal in work, then with compare the comparisons
    on top; the summary for metrics/."""
    repo, hf_home, record = work / "repo", work / "hf", work / "stages.json"
    if not run_stages and not record.exists():
        fail(f"{record} does not exist: no rehearsal to summarize in {work}; run `python -m bench.rehearse`")
    if not (resume and record.exists()):
        shutil.rmtree(work, ignore_errors=True)
        copy_project(repo)
        started = time.perf_counter()
        from requant.params import parse_params

        model = parse_params({**yaml.safe_load((repo / "params.yaml").read_text()), "preset": preset}).model
        twin = build_twin(work, seed, layers, model.layout)
        place_twin_in_hf_cache(work / "twin", hf_home, model.hf_repo)
        shutil.rmtree(work / "twin")
        params = yaml.safe_load((repo / "params.yaml").read_text())
        write_audio(repo, params, seed)
        params = preset_params(params, preset, leaderboard_minutes, hf_home, seed)
        params["eval_clips"]["jfk"].update(source=str(repo / "eval_clip.wav"),
                                           transcript=str(repo / "eval_clip.txt"))
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True, timeout=60)
        write_json(record, {"twin": {"layers": layers, "encoder_mb": twin["encoder_mb"], "revision": REVISION,
                                     "blank_bias": twin["blank_bias"], "preset": preset, "layout": model.layout,
                                     "leaderboard_minutes": leaderboard_minutes},
                            "twin_s": round(time.perf_counter() - started, 1), "stages": {}, "warnings": []})
    done = read_json(record)
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    order = stage_order(repo, env)
    for stage in order if run_stages else ():
        if stage in done["stages"]:
            continue
        done["stages"][stage], stderr = run_stage(repo, env, stage)
        done["warnings"] += [line.split(" WARNING ", 1)[1] for line in stderr.splitlines() if " WARNING " in line]
        write_json(record, done)  # after every stage: --resume carries on from here
        log.info("%s: %s", stage, done["stages"][stage])
    compare_order = run_comparisons(repo, env, done, record) if compare and run_stages else order
    variants = variant_figures(repo / "metrics")  # the comparisons' rows too, when they ran
    stages = done["stages"]
    return {
        "machine": machine(),  # the CPU kind the times belong to
        "twin": done["twin"],
        "warnings": sorted(set(done["warnings"])),
        "twin_s": done["twin_s"],
        "total_s": round(done["twin_s"] + sum(s["wall_s"] for s in stages.values()), 1),
        "peak_rss_gb": max(s["peak_rss_gb"] for s in stages.values()),
        "disk_gb": max(s["disk_gb"] for s in stages.values()),
        # at the end of the run, and what of it only DVC's cache holds (its own copies, not links)
        **({"disk_end_gb": stages[last]["disk_gb"], "cache_own_gb": stages[last]["cache_own_gb"]}
           if (last := next((s for s in reversed(order) if s in stages), None)) and "cache_own_gb" in stages[last]
           else {}),
        "stages": stages,
        "stage_order": [stage for stage in order if stage in stages],  # dvc.yaml's (the JSON's keys are sorted)
        "not_run": [stage for stage in order if stage not in stages],  # a rehearsal cut short
        "variants": variants,
        **({"note": done["note"]} if done.get("note") else {}),  # how the run went, written into work/stages.json
        **({"compare": comparison_summary(done, compare_order)} if done.get("compare_stages") else {}),
    }


def render(summary: dict) -> str:
    """docs/rehearsal.md: the stages (the many small fetch/decode/reference ones summed) and the variants."""
    groups: dict[str, list[dict]] = {}
    for name in summary.get("stage_order", summary["stages"]):
        figures = summary["stages"][name]
        small = name.split("@")[0] in ("fetch", "fetch_eval", "decode", "decode_eval", "reference")
        groups.setdefault(name.split("@")[0] + "@*" if small else name, []).append(figures)
    stage_rows = [f"| `{name}` | {sum(f['wall_s'] for f in figures):.0f} s | "
                  f"{max(f['peak_rss_gb'] for f in figures):.2f} GB | {max(f['disk_gb'] for f in figures):.1f} GB |"
                  for name, figures in groups.items()]
    variant_rows = [f"| {name} | {v['encoder_mb']:.0f} MB | {v['load_s']:.1f} s | {v['encode_s']:.0f} s | "
                    f"{v['greedy_decode_s']:.0f} s | {v['beam_decode_s']:.0f} s | {v['peak_rss_gb']:.2f} GB |"
                    for name, v in summary["variants"].items()]
    clip_s = max((v["clip_s"] for v in summary["variants"].values()), default=0)
    twin, not_run = summary["twin"], summary.get("not_run", [])
    how_far = "so far" if not_run else "in all"
    return "\n".join([
        "# Dress rehearsal of the parakeet preset", "",
        "<!-- generated by `python -m bench.rehearse` (make rehearse) from metrics/rehearsal.json: do not edit -->", "",
        f"The {twin.get('preset', 'parakeet')} preset end to end on the Parakeet-size random twin ({twin['layers']} "
        f"layers, {twin['encoder_mb']:.0f} MB fp32 encoder"
        + (f", its decoder given a blank bias of {twin['blank_bias']:g} for a real token rate"
           if twin.get("blank_bias") is not None else "") + f"), every stage under `dvc repro`, one at a time: **{summary['total_s'] / 60:.0f} min** {how_far} "
        f"(the twin's build {summary['twin_s'] / 60:.0f} min of it), peak RSS **{summary['peak_rss_gb']:.2f} GB**, "
        f"**{summary['disk_gb']:.1f} GB** of disk at most"
        + (f", {summary['disk_end_gb']:.1f} GB at the end, of which DVC's cache holds {summary['cache_own_gb']:.1f} GB "
           "of its own (it hard-links the outputs it tracks)" if "disk_end_gb" in summary else "") + ". How it is set up: "
        "[parakeet-preset.md](parakeet-preset.md#dress-rehearsal-of-the-parakeet-preset-offline-full-scale).", "",
        *([f"Machine: {m['cpu_model']}, {m['cpus']} cores, {m['mem_gb']} GB; kernels' instruction sets: "
           f"{', '.join(m['isa']) or 'none of note'}. Without the twin's build, the run took "
           f"**{(summary['total_s'] - summary['twin_s']) / 60:.0f} min**.", ""]
          if (m := summary.get("machine")) else []),
        *([f"**Cut short**: {len(not_run)} stages not run yet: " + ", ".join(f"`{s}`" for s in not_run) + ".", ""]
          if not_run else []),
        *([summary["note"], ""] if summary.get("note") else []),  # how this run went, when it needs saying
        "| stage | wall | peak RSS (largest process) | disk after |", "|---|---|---|---|", *stage_rows, "",
        f"Per variant, its evaluation's {clip_s:.0f} s pass (one session, the encoder once, then both decodings):"
        if clip_s else "Per variant, its evaluation:", "",
        "| variant | encoder | session load | encoder pass | greedy decoding | beam decoding | peak RSS |",
        "|---|---|---|---|---|---|---|", *(variant_rows or ["| (no variant evaluated yet) | | | | | | |"]), "",
        *compare_section(summary.get("compare")),
        "WER is meaningless on random weights: the rehearsal proves the code path and its costs, not accuracy.", ""])


def compare_section(compare: dict | None) -> list[str]:
    """The comparisons on top of the default run (`make compare`): their stages and what they cost."""
    if not compare:
        return ["No comparison run was rehearsed on top of this one (`make compare`; `python -m bench.rehearse --compare`).",
                ""]
    rows = [f"| `{name}` | {f['wall_s']:.0f} s | {f['peak_rss_gb']:.2f} GB | {f['disk_gb']:.1f} GB |"
            for name, f in ((s, compare["stages"][s]) for s in compare["stage_order"])]
    return [f"Then the comparisons on top (`make compare`: long-form recordings, comparison encoders and rows): "
            f"**{compare['total_s'] / 60:.0f} min** more, peak RSS **{compare['peak_rss_gb']:.2f} GB**, "
            f"**{compare['disk_gb']:.1f} GB** of disk at most.", "",
            "| stage (with the comparisons) | wall | peak RSS (largest process) | disk after |", "|---|---|---|---|",
            *rows, ""]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rehearse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/parakeet-rehearsal"))
    parser.add_argument("--out", type=Path, help="default: metrics/rehearsal.json (parakeet), "
                        "metrics/rehearsal_<preset>.json for the others (docs/rehearsal.md renders the first only)")
    parser.add_argument("--layers", type=int, default=24, help="fewer for a quick smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="carry on in --work after its last recorded stage")
    parser.add_argument("--render", action="store_true", help="only write docs/rehearsal.md from --out")
    parser.add_argument("--compare", action="store_true",
                        help="after the default run, the comparisons on top, as `make compare` runs them")
    parser.add_argument("--preset", default="parakeet", help="a full-scale preset: parakeet, parakeet_v2, "
                        "parakeet_rnnt, parakeet_ctc (the twin takes that model's layout and repository)")
    parser.add_argument("--leaderboard-minutes", type=float, default=0.0,
                        help="also run the leaderboard's long-form track on one synthesized recording this long")
    parser.add_argument("--so-far", action="store_true",
                        help="summarize the stages --work has run, without running more (a rehearsal cut short)")
    args = parser.parse_args()
    from requant.params import DEMO_PRESETS, PRESETS

    if args.preset not in PRESETS or args.preset in DEMO_PRESETS:
        fail(f"--preset {args.preset}: rehearse a full-scale preset, one of "
             f"{', '.join(p for p in PRESETS if p not in DEMO_PRESETS)}")
    default = args.preset == "parakeet"
    args.out = args.out or ROOT / "metrics" / ("rehearsal.json" if default else f"rehearsal_{args.preset}.json")
    if args.render:
        DOC.write_text(render(read_json(args.out)))
        return
    summary = rehearse(args.work, args.seed, args.layers, args.resume or args.so_far, run_stages=not args.so_far,
                       compare=args.compare, preset=args.preset, leaderboard_minutes=args.leaderboard_minutes)
    write_json(args.out, summary)
    if default:
        DOC.write_text(render(summary))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("stages", "variants")}, indent=2))


if __name__ == "__main__":
    run_cli(main)
