"""Past the positional table's cap, exactly: the encoder takes a pass of any length.

The export slices its relative positions from a stored sinusoid table of 2M-1 rows (row r is relative
position M-1-r; Parakeet: M = 5000 frames, 400 s) with Slice(table, M-T, M+T-1) on axis 1. Past M frames
the start goes negative, ONNX reads it from the end, and the first attention fails on a broadcast.

The rewrite reads that Slice as a window of an unbounded table: rows before 0 are positions above M-1,
rows past 2M-2 positions below -(M-1). It prepends and appends exactly the rows a window needs, computed
at run time with the formula of NeMo's RelPositionalEncoding (positions x exp(-ln(10000) 2i / D), sin and
cos interleaved), then slices as before. A window inside the stored range gets no extra row: the stored
rows, bit for bit. The formula is first checked against every stored row; if it does not reproduce them
within `tolerance` the table is not the one we know how to extend, and the graph is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from requant import onnx_graph as og
from requant import patterns, stable

PREFIX = "/positions_extended/"


@dataclass(frozen=True)
class Table:
    """The Slice that cuts a pass's positions out of the stored table, and that table's geometry."""

    node: onnx.NodeProto
    rows: int  # 2M - 1
    width: int  # D


def sinusoid(positions: np.ndarray, width: int) -> np.ndarray:
    """NeMo's sinusoid rows for the given relative positions: [len, width], sin/cos interleaved, float32."""
    inv_freq = inverse_frequencies(width)
    angles = (positions.astype(np.float32)[:, None] * inv_freq[None]).astype(np.float32)
    return np.stack([np.sin(angles), np.cos(angles)], axis=2).reshape(len(positions), width)


def inverse_frequencies(width: int) -> np.ndarray:
    return np.exp(np.arange(0, width, 2, dtype=np.float32) * np.float32(-np.log(10000.0) / width)).astype(np.float32)


def find_table(model: onnx.ModelProto) -> tuple[Table | None, str]:
    """The positional Slice the rewrite can extend, or None and why not."""
    graph = model.graph
    if any(n.name.startswith(PREFIX) for n in graph.node):
        return None, "the positions are already extended"
    limit_slice = patterns.positional_slice(model)
    if limit_slice is None:
        return None, "no linear_pos MatMul reads a Slice of a constant table (the positions have no cap)"
    node, shape = limit_slice

    def value(name: str) -> list[int] | None:
        found = og.constant_value(graph, name)
        return None if found is None else found.tolist()

    axes = value(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    steps = value(node.input[4]) if len(node.input) > 4 and node.input[4] else [1]
    if len(shape) != 3 or shape[0] != 1 or shape[1] % 2 != 1:
        return None, f"the table is {list(shape)}, not [1, 2M-1, D]"
    if axes not in ([1], [-2]) or steps != [1]:
        return None, f"{node.name}: slices axes {axes} with steps {steps}, not the rows (axis 1) one by one"
    return Table(node=node, rows=int(shape[1]), width=int(shape[2])), ""


def check_formula(stored: np.ndarray, tolerance: float) -> float:
    """Largest difference between the stored rows [1, 2M-1, D] and the formula's; raises ValueError past
    tolerance (the table is not NeMo's sinusoid, so rows past it cannot be computed)."""
    rows, width = stored.shape[1], stored.shape[2]
    half = (rows + 1) // 2
    expected = sinusoid(np.arange(half - 1, -half, -1), width)
    worst = float(np.abs(stored[0].astype(np.float64) - expected).max())
    if not worst <= tolerance:  # NaN fails too
        raise ValueError(f"the stored positional table differs from NeMo's sinusoid by {worst:.3g} (allowed "
                         f"{tolerance:g}): rows past its {half} frames cannot be computed")
    return worst


def _rows(new: og.NewNodes, name: str, first: str, stop: str, width: int) -> str:
    """[1, n, D] sinusoid rows for positions first, first-1, ..., stop+1 (float scalars, computed at run time)."""
    positions = new.op("Range", [first, stop, new.op("Constant", [], f"{name}_step",
                                                     value=numpy_helper.from_array(np.float32(-1.0)))], f"{name}_pos")
    freq = new.op("Constant", [], f"{name}_freq", value=numpy_helper.from_array(inverse_frequencies(width)[None]))
    angles = new.op("Mul", [new.op("Unsqueeze", [positions, new.ints(f"{name}_ax1", [1])], f"{name}_col"), freq],
                    f"{name}_angles")
    pair = [new.op("Unsqueeze", [new.op(op, [angles], f"{name}_{op.lower()}"), new.ints(f"{name}_ax2_{op}", [2])],
                   f"{name}_{op.lower()}3") for op in ("Sin", "Cos")]
    return new.op("Reshape", [new.op("Concat", pair, f"{name}_pairs", axis=2), new.ints(f"{name}_shape", [1, -1, width])],
                  name)


def extend(model: onnx.ModelProto, stored: np.ndarray, tolerance: float) -> tuple[onnx.ModelProto, dict]:
    """A copy of model whose positional Slice takes any pass length, and what was done (or why not:
    'refused'). `stored` holds the table's values. The formula is checked before anything changes."""
    table, reason = find_table(model)
    if table is None:
        return model, {"extended": False, "refused": reason}
    worst = check_formula(stored, tolerance)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    node = next(n for n in graph.node if n.name == table.node.name and list(n.output) == list(table.node.output))
    half = (table.rows + 1) // 2  # M: row r holds position M-1-r
    new = og.NewNodes(PREFIX)
    zero = new.ints("zero", [0])
    starts, ends = node.input[1], node.input[2]
    above = new.op("Max", [new.op("Neg", [starts], "neg_start"), zero], "above")  # rows before row 0
    below = new.op("Max", [new.op("Sub", [ends, new.ints("rows", [table.rows])], "past_end"), zero], "below")

    def scalar_float(name: str, value: str) -> str:
        return new.op("Squeeze", [new.op("Cast", [value], f"{name}_f", to=TensorProto.FLOAT), zero], name)

    top = _rows(new, "top", scalar_float("top_first", new.op("Add", [above, new.ints("m1", [half - 1])], "top_hi")),
                scalar_float("top_stop", new.ints("m1_stop", [half - 1])), table.width)
    bottom = _rows(new, "bottom", scalar_float("bottom_first", new.ints("neg_m", [-half])),
                   scalar_float("bottom_stop", new.op("Sub", [new.ints("neg_m2", [-half]), below], "bottom_lo")),
                   table.width)
    extended = new.op("Concat", [top, node.input[0], bottom], "table", axis=1)
    node.input[0] = extended
    node.input[1] = new.op("Add", [starts, above], "starts")
    node.input[2] = new.op("Add", [ends, above], "ends")
    position = list(graph.node).index(node)
    for offset, added in enumerate(new.nodes):
        graph.node.insert(position + offset, added)
    return out, {"extended": True, "refused": "", "stored_frames": half,
                 "formula_max_error": stable.stable_error(worst)}  # written to git: robust to last bits


ELEMENTWISE = {"Mul", "Div", "Add", "Sub"}


def linear_pos_input_bound(model: onnx.ModelProto, base_dir: Path) -> tuple[str, np.ndarray] | tuple[None, str]:
    """The tensor the linear_pos MatMuls read and, per channel, the largest |value| it takes at any position;
    or (None, why).

    Every sinusoid row lies in [-1, 1]; short windows see only part of that box (a low-frequency channel
    sweeps it only at far positions), so a range calibrated on them clips long passes. Between the table's
    Slice and the MatMuls a recipe may put elementwise ops with constants (SmoothQuant's Mul): the box is
    carried through them channel by channel, exactly, so the bound holds at every pass length."""
    found = patterns.positional_slice(model)
    if found is None:
        return None, "no positional table"
    graph, users = model.graph, og.consumers(model.graph)
    inits = {t.name: t for t in graph.initializer}
    width = found[1][2]
    low, high = -np.ones(width), np.ones(width)  # float64: the bound is exact for float32 constants
    tensor = found[0].output[0]
    while True:
        readers = [node for node, _ in users.get(tensor, [])]
        if readers and all(n.op_type == "MatMul" and n.input[0] == tensor for n in readers):
            return tensor, np.maximum(np.abs(low), np.abs(high))
        if len(readers) != 1 or readers[0].op_type not in ELEMENTWISE:
            return None, f"{tensor} is read by {[n.op_type for n in readers]}, not by MatMuls through elementwise ops"
        node = readers[0]
        other = node.input[1] if node.input[0] == tensor else node.input[0]
        value = og.read_tensor(inits[other], base_dir) if other in inits else og.constant_value(graph, other)
        if value is None or value.size not in (1, width):
            return None, f"{node.name}: its other operand is not a constant per channel"
        value = value.astype(np.float64).reshape(-1)
        if node.op_type in ("Mul", "Div"):
            factor = value if node.op_type == "Mul" else 1.0 / value
            low, high = np.minimum(low * factor, high * factor), np.maximum(low * factor, high * factor)
        elif node.op_type == "Add":
            low, high = low + value, high + value
        elif node.input[0] == tensor:  # Sub: tensor - constant
            low, high = low - value, high - value
        else:  # constant - tensor
            low, high = value - high, value - low
        tensor = node.output[0]
