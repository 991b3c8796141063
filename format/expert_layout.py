"""Where things lie in a package's shards: every tensor on an ALIGN boundary, and each expert's slot (its
parts, its pieces) as the expert cache copies it into a bank and the kernels address it."""
from __future__ import annotations

from .errors import PackageError
from .weight_formats import encoded_size, fmt

ALIGN = 256                      # byte alignment of every tensor in a shard (GPU copy offsets)
PIECE_QUANTUM = {"mxfp4": 32}    # an expert's pieces cut down's columns on whole MXFP4 blocks (32 values)


def pad(n: int) -> int:
    return -n % ALIGN


def _slot_layout(shapes: dict[str, tuple[int, ...]], dtype: str) -> dict:
    """Every part starts on a block boundary of the format, so that its element offset is a whole number
    of blocks (shaders/weights.wgsl decodes by element index): on an ALIGN boundary for f32 and f16,
    whose blocks are one word, and on a block for the block formats (68 or 148 bytes)."""
    f = fmt(dtype)
    block_bytes = 4 * f.words
    align = ALIGN if f.words == 1 else block_bytes
    layout, off = {}, 0
    for role, shape in shapes.items():
        part_dtype = dtype if len(shape) == 2 else "f32"
        size = encoded_size(shape, part_dtype)
        layout[role] = {"offset": off, "size": size, "shape": list(shape), "dtype": part_dtype,
                        "elem_offset": off // block_bytes * f.block, "word_offset": off // 4}
        off += -(-size // align) * align
    layout["slot_bytes"] = off
    layout["slot_elems"] = off // block_bytes * f.block
    layout["dtype"] = dtype
    return layout


def piece_shapes(shapes: dict[str, tuple[int, ...]], rows: int) -> dict[str, tuple[int, ...]]:
    """The parts of one piece holding `rows` rows of the intermediate dimension: gate, up (and their
    biases) by rows, down by columns; down's bias is whole in every piece (zero after the first)."""
    out = {}
    for role, shape in shapes.items():
        if role == "down":
            out[role] = (shape[0], rows)
        elif role == "down_bias":
            out[role] = shape
        else:
            out[role] = (rows, *shape[1:])
    return out


def expert_layout(shapes: dict[str, tuple[int, ...]], dtype: str, max_binding: int = 128 << 20) -> dict:
    """Byte layout of one expert's slot: each part on a block boundary (_slot_layout). Matrices (2-D) are
    stored in `dtype` and addressed by element offset; 1-D parts (biases) stay f32 and are addressed by
    32-bit word offset.
    An expert whose slot would exceed max_binding is cut into `pieces` along its intermediate dimension
    (`piece_rows` rows each, the last maybe fewer), each piece a slot of this layout; its shard holds the
    pieces one after another."""
    I = shapes["gate"][0]
    quantum = PIECE_QUANTUM.get(dtype, 1)
    rows = I
    while True:
        layout = _slot_layout(piece_shapes(shapes, rows), dtype)
        if layout["slot_bytes"] <= max_binding and layout["slot_elems"] < 2**32:    # kernels index it with u32
            break
        if rows <= quantum:
            raise PackageError(f"{quantum} row(s) of an expert exceed a {max_binding}-byte binding")
        smaller = -(-I // (-(-I // rows) + 1))       # the next larger number of pieces ...
        rows = max(quantum, min(smaller // quantum * quantum, rows - quantum))   # ... on whole quanta
    layout["pieces"] = -(-I // rows)
    layout["piece_rows"] = rows
    layout["expert_bytes"] = layout["pieces"] * layout["slot_bytes"]
    return layout
