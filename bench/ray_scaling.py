"""eval.engine local against ray with 1 and 2 worker nodes: one demo evaluation, timed; and an estimate of
the full-scale matrix per node count. Writes metrics/ray_scaling.json and prints both tables.

    python -m bench.ray_scaling                 # the demo evaluation of fp32 (about 6 min on 2 cores)
    python -m bench.ray_scaling --project small # the tests' random-model project instead (about 2 min)

The demo project is the repository's own demo evaluation in a scratch folder: models/base and the four
390 s clips linked from this checkout, their fp32 references and the 400-utterance corpus built there by
the reference and corpus stages' functions (data/reference and data/corpus are not in git). Each engine
runs `python -m stages.evaluate <variant>` as DVC would; the Ray runs join clusters of 1 and 2 `ray start`
nodes of one CPU each on this machine (tests/ray_cluster.py), and each must write the local engine's
bytes. On this 2-core machine two nodes share the same two cores, so the 2-node figure is a floor for
what two machines give; the estimate below takes its per-task overhead from these runs and its per-pass
and per-utterance costs from the committed benchmarks (each number says where it comes from).
"""

from __future__ import annotations

import argparse
import heapq
import logging
import math
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from requant.common import read_json, setup_logging, write_json
from requant.evalsets import read_corpus
from tests.ray_cluster import REPO, LocalCluster, build_project, evaluate_cmd, stage_env, write_params

log = logging.getLogger("bench.ray_scaling")

OUT = Path("metrics/ray_scaling.json")
# The full-scale matrix the estimate is for (issue 29): Parakeet v3's 25 FLEURS languages, ~17 variants.
FULL = {"utterances": 9000, "utterance_s": 12.5, "variants": 17, "long_clips": 4, "long_s": 390.0,
        "decodings": ["greedy", "beam"], "corpus_shard": 64, "node_counts": [1, 2, 4, 8, 16, 32]}


def demo_project(root: Path) -> Path:
    """The repository's demo evaluation inputs in `root`: models and audio linked, references and corpus
    built (the same functions as stages reference and corpus)."""
    from requant.asr import decodings_for
    from requant.evalsets import clip_audio
    from requant.params import load_params
    from stages.corpus import build_corpus
    from requant.clips import build_reference

    params = load_params(REPO / "params.yaml")
    for link in ("models/base", "data/audio/eval", "data/raw/eval"):
        if not (REPO / link).exists():
            raise SystemExit(f"{REPO / link} is missing; run `dvc repro` (or use --project small)")
        (root / link).parent.mkdir(parents=True, exist_ok=True)
        (root / link).symlink_to(REPO / link)
    for clip in params.eval_clips:
        log.info("reference for %s", clip)
        build_reference(clip_audio(clip, root / "data/audio/eval"), root / "data/raw/eval" / clip,
                        root / "data/reference" / clip, params.eval.section_s, params.eval.max_s,
                        params.eval.decoder, root, decodings_for(params.eval.decodings, params.beam))
    log.info("corpus")
    build_corpus(params, root / "data/corpus")
    return root


def engine_params(root: Path, demo: bool, engine: str, address: str | None, corpus_shard: int) -> None:
    if not demo:
        write_params(root, engine, address, corpus_shard=corpus_shard)
        return
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["eval"].update(engine=engine, corpus_shard=corpus_shard)
    raw["ray"]["address"] = address
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


def run(root: Path, variant: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(evaluate_cmd(variant), cwd=root, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"stages.evaluate failed:\n{done.stderr[-3000:]}")
    return round(time.perf_counter() - started, 2)


def measure(root: Path, demo: bool, variant: str, corpus_shard: int) -> dict:
    """Wall time of the stage per engine; the Ray runs' output checked against the local bytes."""
    out = root / "metrics/eval" / f"{variant}.json"
    engine_params(root, demo, "local", None, corpus_shard)
    # twice, the faster one counted: the first run also pays for a cold page cache and cold imports
    local_s = min(run(root, variant, stage_env()) for _ in range(2))
    rows = [{"engine": "local", "nodes": 0, "wall_s": local_s, "identical": True}]
    local = out.read_bytes()
    timing = read_json(root / "metrics/timing" / f"{variant}.json")
    for nodes in (1, 2):
        cluster = LocalCluster(nodes=nodes)
        started = time.perf_counter()
        with cluster:
            start_s = round(time.perf_counter() - started, 2)
            engine_params(root, demo, "ray", cluster.address, corpus_shard)
            out.unlink()
            wall = run(root, variant, cluster.client_env())
        rows.append({"engine": "ray", "nodes": nodes, "wall_s": wall, "cluster_start_s": start_s,
                     "identical": out.read_bytes() == local})
    tasks = len(timing["long"]) + math.ceil(len(read_corpus(root)) / corpus_shard)
    return {"variant": variant, "corpus_shard": corpus_shard, "tasks": tasks, "runs": rows,
            "local_timing": timing}


def unit_costs() -> dict:
    """Per-pass and per-utterance seconds at Parakeet's size, from the committed benchmarks."""
    bench = read_json(REPO / "metrics/bench.json")["variants"]  # the Parakeet-size twin, this machine
    passes = {v: {p["audio_s"]: p for p in spec["passes"]} for v, spec in bench.items()}
    long_encode = statistics.mean(p[FULL["long_s"]]["pass_s"] for p in passes.values())
    load = statistics.mean(p[FULL["long_s"]]["load_s"] for p in passes.values())
    per_audio_s = statistics.mean(p[30.0]["pass_s"] / 30.0 for p in passes.values())
    beam = read_json(REPO / "metrics/bench_beam.json")["fp32"]  # the demo decoder: greedy and beam 4
    decode_long = beam["decodings"]["greedy"]["long_decode_s"] + beam["decodings"]["beam4"]["long_decode_s"]
    decode_utt = (beam["decodings"]["greedy"]["corpus_decode_s"] + beam["decodings"]["beam4"]["corpus_decode_s"]) \
        / beam["utterances"]
    return {
        "long_pass_s": round(long_encode + load + decode_long, 2),
        "load_s": round(load, 2),
        "utterance_s": round(per_audio_s * FULL["utterance_s"] + decode_utt, 4),
        "sources": {
            "long_encode_s": f"{long_encode:.1f}: metrics/bench.json, mean 390 s pass_s over {sorted(bench)}",
            "load_s": f"{load:.1f}: metrics/bench.json, mean load_s of those passes",
            "encode_per_audio_s": f"{per_audio_s:.4f}: metrics/bench.json, mean 30 s pass_s / 30 over the same",
            "decode_long_s": f"{decode_long:.2f}: metrics/bench_beam.json fp32 long_decode_s, greedy + beam4 "
                             "(the demo decoder: Parakeet's larger decoder-joint makes this a floor)",
            "decode_utterance_s": f"{decode_utt:.4f}: metrics/bench_beam.json fp32 corpus_decode_s (greedy + "
                                  "beam4) / 400 utterances (demo decoder, a floor)",
        },
    }


def makespan(durations: list[float], nodes: int) -> float:
    """Longest-first list scheduling on `nodes` nodes of one task at a time: what Ray's queue gives when
    the long passes are submitted first, as run_ray does."""
    free = [0.0] * nodes
    for d in sorted(durations, reverse=True):
        heapq.heapreplace(free, free[0] + d)
    return max(free)


def estimate(costs: dict, overhead_s: float) -> list[dict]:
    """The full-scale matrix per node count: each node one 2-core machine like this one, one task at a
    time (a 390 s pass at Parakeet's size peaks at 6.9 GB and uses both cores)."""
    shard = FULL["corpus_shard"]
    sizes = [shard] * (FULL["utterances"] // shard) + ([FULL["utterances"] % shard] if FULL["utterances"] % shard else [])
    # every corpus task loads the encoder once more than the local engine's single corpus session does
    per_variant = [costs["long_pass_s"] + overhead_s] * FULL["long_clips"] + [
        n * costs["utterance_s"] + costs["load_s"] + overhead_s for n in sizes]
    tasks = per_variant * FULL["variants"]
    serial_h = FULL["variants"] * (FULL["long_clips"] * costs["long_pass_s"]
                                   + FULL["utterances"] * costs["utterance_s"]) / 3600
    rows = [{"engine": "local (dvc repro, one variant after another)", "nodes": 1, "hours": round(serial_h, 2)}]
    for nodes in FULL["node_counts"]:
        hours = makespan(tasks, nodes) / 3600
        rows.append({"engine": "ray", "nodes": nodes, "tasks": len(tasks), "hours": round(hours, 2),
                     "speedup": round(serial_h / hours, 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", choices=["demo", "small"], default="demo")
    parser.add_argument("--variant", default="fp32")
    parser.add_argument("--corpus-shard", type=int, default=64)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    setup_logging()
    with tempfile.TemporaryDirectory(prefix="ray-scaling-") as scratch:
        root = Path(scratch)
        demo_project(root) if args.project == "demo" else build_project(root, utterances=320)
        measured = measure(root, args.project == "demo", args.variant, args.corpus_shard)
    runs = measured["runs"]
    # Ray's cost per task on one node against the local engine: connecting, scheduling, a worker's imports
    overhead = max(0.0, (runs[1]["wall_s"] - runs[0]["wall_s"]) / measured["tasks"])
    costs = unit_costs()
    result = {"project": args.project, "measured": measured, "overhead_per_task_s": round(overhead, 3),
              "unit_costs": costs, "full_scale": {**FULL, "estimate": estimate(costs, overhead)}}
    write_json(args.out, result)
    print(f"\n{args.project} evaluation of {args.variant} ({measured['tasks']} tasks, corpus_shard "
          f"{args.corpus_shard}), this machine (2 cores):")
    print(f"  {'engine':<8}{'nodes':>6}{'wall s':>9}{'vs local':>10}  same bytes")
    for r in runs:
        print(f"  {r['engine']:<8}{r['nodes'] or '-':>6}{r['wall_s']:>9.1f}{runs[0]['wall_s'] / r['wall_s']:>9.2f}x"
              f"  {'yes' if r['identical'] else 'NO'}")
    print(f"\nFull scale ({FULL['variants']} variants x ({FULL['long_clips']} x {FULL['long_s']:.0f} s passes + "
          f"{FULL['utterances']} utterances of ~{FULL['utterance_s']} s), greedy + beam; "
          f"{costs['long_pass_s']} s per pass, {costs['utterance_s']} s per utterance, {overhead:.2f} s Ray "
          "overhead per task):")
    print(f"  {'engine':<46}{'nodes':>6}{'hours':>8}{'speedup':>9}")
    for r in result["full_scale"]["estimate"]:
        print(f"  {r['engine']:<46}{r['nodes']:>6}{r['hours']:>8.2f}{r.get('speedup', 1.0):>8.2f}x")
    print(f"\nwrote {args.out}")
    if not all(r["identical"] for r in runs):
        raise SystemExit("the Ray engine's output differs from the local engine's")


if __name__ == "__main__":
    main()
