"""Training-step cost of the TDT loss on long concatenations: whole clip vs sentence by sentence.

    python -m demo.loss_bench [--clips 4] [--seconds 40] [--repeats 2]

One forward + backward of demo.train.batch_loss on the committed model (imported to torch), for a
batch of short sentences and for a batch of long concatenations scored whole and with `cuts`
(`--segment-long`). Prints a table: step time, loss, and the cosine between the two gradients.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from demo.corpus import bucketed_batches, concatenation, make_batch, training_corpus
from demo.train import batch_loss, checkpoint_from_onnx, load_checkpoint


def step(model, batch, cuts) -> tuple[float, float, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Seconds, loss and flat gradient of one forward + backward."""
    model.zero_grad()
    t0 = time.perf_counter()
    loss = batch_loss(model, *batch, cuts)
    loss.backward()
    seconds = time.perf_counter() - t0
    return seconds, loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    utts = training_corpus(100, seed=99)  # 200 sentences, cached under demo/.work
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_checkpoint(checkpoint_from_onnx(Path("demo/model"), Path(tmp) / "imported.pt"))
    clips = [concatenation(utts, rng, args.seconds) for _ in range(args.clips)]
    long_batch = make_batch([(audio, text) for audio, text, _ in clips], None)
    short_items = bucketed_batches(utts, rng, 200.0)[0]
    rows = [("short sentences", make_batch(short_items, None), None, sum(len(a) for a, _ in short_items)),
            ("long, whole clip", long_batch, None, sum(len(a) for a, _, _ in clips)),
            ("long, by sentence", long_batch, [c for _, _, c in clips], sum(len(a) for a, _, _ in clips))]
    print("| batch | audio (s) | step (s) | loss | gradient cosine vs whole clip |\n|---|---|---|---|---|")
    whole = None
    for name, batch, cuts, samples in rows:
        seconds, loss, grad = min((step(model, batch, cuts) for _ in range(args.repeats)), key=lambda r: r[0])
        if name == "long, whole clip":
            whole = grad
        cosine = f"{float(grad @ whole / (grad.norm() * whole.norm())):.5f}" if cuts is not None else "-"
        print(f"| {name} | {samples / 16_000:.0f} | {seconds:.2f} | {loss:.5f} | {cosine} |")


if __name__ == "__main__":
    main()
