"""HF checkpoint directory -> RDRR package directory, in bounded memory: dense tensors are streamed in
row blocks (a family that reshapes a tensor reads that one whole), experts are read one at a time, and
the safetensors files are read with plain reads, so the peak stays near one expert plus one block."""
from __future__ import annotations

import math
import re
import time
from pathlib import Path

from tqdm import tqdm

from webmoe.format.expert_layout import expert_layout
from webmoe.format.hub import CHECKPOINT_FILES, REPO_ID, HubError, hub_uri, snapshot

from .checkpoint import Checkpoint
from .errors import ConversionError
from .expert_encoding import expert_encoder
from .families import family_for
from .model_plan import build_plan, package_tensors
from .plan import DEFAULT_MAX_BINDING, parts_of
from .tokenizer_info import tokenizer_files, tokenizer_info
from .weight_dtypes import weight_dtypes
from .writer import PackageWriter

BLOCK_BYTES = 16 << 20           # dense tensors are read and written in row blocks of about this many f32 bytes


def convert(src: Path, out: Path, dtype: str = "f16", force: bool = False, progress: bool | None = None,
            max_binding: int = DEFAULT_MAX_BINDING, stats: dict | None = None,
            part_dtypes: dict[str, str | None] | None = None, mirrors: tuple[str, ...] = (),
            revision: str | None = None) -> Path:
    """Writes the package; returns its path. dtype: a preset of weight_dtypes.PRESETS; part_dtypes:
    {part: format} for the parts that differ from it (experts, ffn, attention, embed, head). Experts a
    checkpoint stores in a format the kernels read (GPT-OSS's MXFP4) stay in it unless part_dtypes
    names the experts' format. max_binding: no tensor part or expert slot of the package exceeds it
    (WebGPU's default storage binding size unless a test lowers it). mirrors: http(s) base URLs that
    also serve the package's files (the browser fetches a shard from the next one when one fails; every
    shard is checked against its sha256 wherever it comes from). stats, if given, receives
    bytes_read, bytes_written and seconds. src: a checkpoint directory, or a Hub repository (ORG/REPO or
    hf://ORG/REPO[@REVISION]; revision: a branch, tag or commit) downloaded with huggingface_hub
    (format/hub.py)."""
    t_start = time.perf_counter()
    dtypes = weight_dtypes(dtype, part_dtypes)
    bad = [m for m in mirrors if not re.fullmatch(r"https?://\S+", m) or len(m) > 2048]
    if bad or len(set(mirrors)) != len(mirrors) or len(mirrors) > 16:
        raise ConversionError(f"--mirror takes up to 16 distinct http(s) URLs; got {list(mirrors)}")
    if max_binding < 1024:
        raise ConversionError(f"--max-binding must be at least 1024 bytes, got {max_binding}")
    ckpt = Checkpoint(checkpoint_dir(src, revision))
    family = family_for(ckpt.config)
    d, moe = family.dims, family.moe
    ckpt.check_layer_count(d.num_layers)
    dense = family.dense_tensors(ckpt)
    for name, shape in dense.items():           # headers only: fail before writing anything
        if tuple(ckpt.shape(name)) != tuple(shape):
            raise ConversionError(f"tensor {name} has shape {list(ckpt.shape(name))}, expected {list(shape)} "
                                  "from config.json")
    for l in moe.moe_layers:
        family.check_experts(ckpt, l)
    tok_info = tokenizer_info(ckpt, d.vocab_size)
    native = family.native_expert_format(ckpt)
    if native and not (part_dtypes or {}).get("experts"):
        dtypes["experts"] = native
    tensors = package_tensors(family, ckpt, dtypes)      # name -> (shape, storage format): what is written
    try:
        layout = expert_layout(family.expert_shapes(), dtypes["experts"], max_binding)
        plan = build_plan(family, ckpt, tensors, dtypes["experts"], max_binding=max_binding)
    except ValueError as e:                     # a dimension the kernels or the bindings do not support
        raise ConversionError(str(e)) from None

    n_expert_params = sum(math.prod(s) for s in family.expert_shapes().values())
    total = sum(math.prod(s) for s in dense.values()) + len(moe.moe_layers) * moe.num_experts * n_expert_params

    writer = PackageWriter(out, force, source=src)
    expert_weights = len(moe.moe_layers) * moe.num_experts * n_expert_params
    try:
        with expert_encoder(dtypes["experts"], layout, expert_weights) as encode_all, \
                tqdm(total=total, unit="param", unit_scale=True, desc=f"convert {family.name}",
                     disable=(not progress) if progress is not None else None) as bar:
            joined = family.joined_tensors()
            sources = {src for srcs in joined.values() for src in srcs}
            for name, shape in dense.items():
                if name in sources:                 # written inside its joined tensor, below
                    continue
                if family.transforms(name):
                    for out_name, array in family.transform_dense(name, ckpt.read(name, shape)).items():
                        for part in parts_of(plan["splits"], out_name, array.shape):
                            writer.add_dense(part["tensor"], array[part["row0"]:part["row0"] + part["rows"]],
                                             tensors[out_name][1])
                else:
                    for part in parts_of(plan["splits"], name, shape):
                        writer.add_dense_blocks(part["tensor"], (part["rows"], *shape[1:]), tensors[name][1],
                                                _row_blocks(ckpt, name, shape, part["row0"], part["rows"]))
                bar.update(math.prod(shape))
            for name, srcs in joined.items():
                stacked = [(src, dense[src]) for src in srcs]
                for part in parts_of(plan["splits"], name, tensors[name][0]):
                    writer.add_dense_blocks(part["tensor"], (part["rows"], *tensors[name][0][1:]), tensors[name][1],
                                            _joined_row_blocks(ckpt, stacked, part["row0"], part["rows"]))
                bar.update(sum(math.prod(shape) for _, shape in stacked))
            for name, array in family.generated_tensors().items():
                writer.add_dense(name, array, tensors[name][1])
            experts = (((l, e), family.expert_weights(ckpt, l, e)) for l in moe.moe_layers
                       for e in range(moe.num_experts))
            for (l, e), data in encode_all(experts):            # quantised on every core
                writer.add_expert_shard(l, e, data, layout)
                bar.update(n_expert_params)
        for f in tokenizer_files(ckpt):
            writer.copy_file(f, f.name)
        moe_info = {**family.describe()["moe"], "expert_layout": layout, "router": f"{moe.scoring}_topk"}
        manifest = {
            "family": family.name,
            "architecture": (ckpt.config.get("architectures") or [None])[0],
            "dtype": dtype,
            "dtypes": dtypes,
            "config": family.describe()["dims"],
            "moe": moe_info,
            "hf_config": ckpt.config,
            "generation_config": ckpt.generation_config,
            "tokenizer": tok_info,
            "plan": plan,
            **({"mirrors": [m if m.endswith("/") else m + "/" for m in mirrors]} if mirrors else {}),
        }
        path = writer.finish(manifest)
        if stats is not None:
            stats.update(bytes_read=ckpt.bytes_read, bytes_written=writer.bytes_written,
                         seconds=time.perf_counter() - t_start)
        return path
    except OSError as e:            # a full disk, a folder that cannot be written: said in one line
        writer.abort()
        where = f" ({e.filename})" if e.filename else ""
        raise ConversionError(f"writing {out} failed: {e.strerror or e}{where}; nothing was left behind") from None
    except BaseException:
        writer.abort()
        raise


def _row_blocks(ckpt: Checkpoint, name: str, shape, row0: int, rows: int):
    """Rows row0 .. row0 + rows of a tensor as float32 blocks of about BLOCK_BYTES (the writer joins
    them into whole blocks of the storage format)."""
    if len(shape) < 2:
        yield ckpt.read(name, shape)
        return
    width = math.prod(shape[1:])
    step = max(1, BLOCK_BYTES // (4 * width))
    for r in range(row0, row0 + rows, step):
        yield ckpt.read_rows(name, r, min(r + step, row0 + rows))


def _joined_row_blocks(ckpt: Checkpoint, stacked: list[tuple[str, tuple]], row0: int, rows: int):
    """Rows row0 .. row0 + rows of tensors stacked by rows ([(name, shape)] in order: a joined tensor), as
    _row_blocks gives them."""
    start = 0
    for name, shape in stacked:
        lo, hi = max(row0, start), min(row0 + rows, start + shape[0])
        if lo < hi:
            if len(shape) < 2:
                yield ckpt.read(name, shape)[lo - start:hi - start]
            else:
                yield from _row_blocks(ckpt, name, shape, lo - start, hi - lo)
        start += shape[0]


def checkpoint_dir(src, revision: str | None = None) -> Path:
    """The checkpoint's folder: src itself, or the Hub repository src names (ORG/REPO where no such folder
    exists, or hf://ORG/REPO[@REVISION]) as downloaded into the Hub cache."""
    hub = hub_uri(src)
    if hub is None and not Path(src).exists() and REPO_ID.match(str(src)):
        hub = (str(src), None)
    if hub is None:
        if revision:
            raise ConversionError(f"--revision is for a Hub repository; {src} is a folder")
        return Path(src)
    repo, rev = hub
    if rev and revision and rev != revision:
        raise ConversionError(f"{src} names revision {rev} and --revision {revision}: give one")
    try:
        return snapshot(repo, revision or rev, CHECKPOINT_FILES)
    except HubError as e:
        raise ConversionError(str(e)) from None
