"""webmoe against llama.cpp's Vulkan backend on the same adapter and the same model, in one table.

    .venv/bin/python benchmarks/bench_llama.py [--formats f16,q8,q4] [--rounds 3] [--peers /tmp/webmoe-peers]
                                            [--checkpoint HF_DIR] [--prompt 128] [--decode 32]

1. Builds llama.cpp's `llama-bench` and `llama-quantize` with the Vulkan backend from the llama.cpp source
   that PyPI's llama-cpp-python sdist vendors (once per machine, about 10 minutes on 2 cores; needs
   Debian's cmake g++ libvulkan-dev glslc glslang-tools spirv-headers).
2. Writes a Mixtral-architecture checkpoint with random weights (speed does not need training): hidden
   1024, 8 layers, 16 heads / 4 KV heads, 8 experts top-2, expert intermediate 256 (72 M parameters),
   f16 safetensors, and a 512-piece SentencePiece tokenizer both converters read (needs the `bench` extra).
3. Converts it for both engines: llama.cpp's convert_hf_to_gguf.py (f16, q8_0; Q4_K_M by llama-quantize)
   and `webmoe convert` (f16, q8, q4).
4. Measures each format `--rounds` times, alternating which engine goes first: llama-bench -p 128 -n 32
   -ngl 99 (every layer and expert on the adapter; its own warm-up run first) and `webmoe speed` with the
   same prompt and decode lengths (every expert resident, warmed up), both decoding as llama-bench's tg
   does: random token ids one at a time from an empty cache. Prints each round and the medians with their
   spread, and webmoe's ratio of medians.

`--checkpoint` measures another Hugging Face checkpoint instead (for example a full-depth one from
scripts/full_size_checkpoint.py): webmoe converts it as it is; llama.cpp reads a folder of links to its
weights and config with a SentencePiece tokenizer beside them (trained here, padded to the model's
vocabulary by llama.cpp's converter), since its converter accepts a byte-level BPE tokenizer only when it
recognises the tokenizer's pre-tokenizer. The vocabulary's size, and so every tensor, is the checkpoint's.

On a machine without a GPU both run on Mesa lavapipe; WEBMOE_ADAPTER / GGML_VK_VISIBLE_DEVICES pick
another adapter. Run it on an otherwise idle machine: both engines use every core.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA_CPP_PYTHON = "0.3.36"
PROMPT, DECODE = 128, 32     # llama-bench's pp128 / tg32
GGUF_TYPE = {"f16": "f16", "q8": "q8_0", "q4": "Q4_K_M"}    # webmoe format -> the closest llama.cpp type
BUILD_TOOLS = {"cmake": "cmake", "c++": "g++", "glslc": "glslc", "glslangValidator": "glslang-tools"}


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, cmd)), file=sys.stderr)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def build_llama(peers: Path) -> Path:
    """llama.cpp's source tree under peers/llama with build/bin/llama-bench and llama-quantize."""
    src = peers / "llama"
    if all((src / "build" / "bin" / b).exists() for b in ("llama-bench", "llama-quantize")):
        return src
    missing = [pkg for tool, pkg in BUILD_TOOLS.items() if not shutil.which(tool)]
    if missing or not Path("/usr/include/vulkan/vulkan.hpp").exists():
        sys.exit(f"building llama.cpp needs: apt-get install {' '.join(missing + ['libvulkan-dev', 'spirv-headers'])}")
    if not (src / "build" / "CMakeCache.txt").exists():
        peers.mkdir(parents=True, exist_ok=True)
        sdist = peers / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
        if not sdist.exists():
            run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", peers,
                 f"llama-cpp-python=={LLAMA_CPP_PYTHON}"])
        shutil.rmtree(src, ignore_errors=True)
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                if m.name.startswith(prefix) and len(m.name) > len(prefix):
                    m.name = m.name[len(prefix):]
                    members.append(m)
            tar.extractall(src, members=members, filter="data")
        allow_old_vulkan_headers(src / "ggml" / "src" / "ggml-vulkan" / "ggml-vulkan.cpp")
        run(["cmake", "-S", src, "-B", src / "build", "-DGGML_VULKAN=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
             "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
             "-DLLAMA_BUILD_SERVER=OFF"], stdout=subprocess.DEVNULL)
    run(["cmake", "--build", src / "build", "--target", "llama-bench", "llama-quantize", f"-j{os.cpu_count()}"],
        stdout=subprocess.DEVNULL)
    return src


def allow_old_vulkan_headers(path: Path) -> None:
    """Debian bookworm's Vulkan headers (1.3.239) predate VK_EXT_layer_settings, which llama.cpp passes to
    its instance only to turn on a validation layer's best-practice checks: without the extension in the
    headers, the instance is created without those settings."""
    if "VK_EXT_layer_settings" in Path("/usr/include/vulkan/vulkan_core.h").read_text():
        return
    s = path.read_text()
    block = re.search(r"\n(    VkBool32 enable_best_practice.*?\n    vk::InstanceCreateInfo instance_create_info\("
                      r"([^;]*?), &layer_setting_info\);\n)", s, re.S)
    if block is None or "#ifdef VK_EXT_layer_settings" in s[:block.start()][-200:]:
        return
    plain = f"    vk::InstanceCreateInfo instance_create_info({block[2]});\n"
    path.write_text(s[:block.start(1)] + "#ifdef VK_EXT_layer_settings\n" + block[1] + "#else\n" + plain +
                    "#endif\n" + s[block.end(1):])


def write_checkpoint(out: Path) -> Path:
    """The Mixtral-shaped bench checkpoint (random weights, fixed seed) with a SentencePiece tokenizer."""
    if (out / "model.safetensors").exists():
        return out
    import torch
    import transformers as T
    out.mkdir(parents=True, exist_ok=True)
    config = T.MixtralConfig(vocab_size=512, hidden_size=1024, intermediate_size=256, num_hidden_layers=8,
                             num_attention_heads=16, num_key_value_heads=4, num_local_experts=8,
                             num_experts_per_tok=2, max_position_embeddings=4096, tie_word_embeddings=False,
                             bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    T.MixtralForCausalLM(config).to(torch.float16).save_pretrained(out)
    sentencepiece_tokenizer(out)
    T.LlamaTokenizerFast.from_pretrained(out).save_pretrained(out)     # tokenizer.json for webmoe
    return out


def sentencepiece_tokenizer(out: Path) -> None:
    """A 512-piece SentencePiece tokenizer (out/tokenizer.model) learnt from the project's own prose: any
    English text will do for speed."""
    import sentencepiece as spm
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(out / "tokenizer"), vocab_size=512,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2,
                                   unk_id=0, pad_id=-1, minloglevel=2)
    corpus.unlink()
    (out / "tokenizer.vocab").unlink()


def for_llama(ckpt: Path, work: Path) -> Path:
    """A folder llama.cpp's converter reads for `ckpt`: links to its weights and config, and a SentencePiece
    tokenizer in place of its own."""
    view = work / f"{ckpt.name}-for-llama"
    if (view / "tokenizer.model").exists():
        return view
    view.mkdir(parents=True, exist_ok=True)
    for f in ckpt.iterdir():
        if not f.name.startswith("tokenizer") and not (view / f.name).exists():
            (view / f.name).symlink_to(f.resolve())
    sentencepiece_tokenizer(view)
    return view


# llama.cpp's converter with byte-level BPE vocabularies read as SentencePiece where the folder holds only
# a tokenizer.model (for_llama): argv as convert_hf_to_gguf.py's
CONVERT_SHIM = """
import runpy, sys
llama = sys.argv.pop(1)
sys.path[:0] = [llama, llama + "/gguf-py"]
from conversion.base import TextModel
TextModel._set_vocab_gpt2 = lambda self: self._set_vocab_sentencepiece()
sys.argv[0] = llama + "/convert_hf_to_gguf.py"
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def gguf(llama: Path, ckpt: Path, fmt: str, work: Path, keep_f16: bool = True) -> Path:
    """The checkpoint as llama.cpp reads it, in the type closest to webmoe's format `fmt`."""
    target = work / f"{ckpt.name}-{GGUF_TYPE[fmt]}.gguf"
    if not target.exists():
        if fmt == "q4":      # llama.cpp's converter writes no k-quants: llama-quantize makes them from f16
            f16 = gguf(llama, ckpt, "f16", work)
            run([llama / "build" / "bin" / "llama-quantize", f16, target, GGUF_TYPE[fmt]],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if not keep_f16:
                f16.unlink()             # a full-size f16 GGUF is the checkpoint's size again
        else:
            shim = [sys.executable, "-c", CONVERT_SHIM, llama] if (ckpt / "tokenizer.model").exists() and not \
                (ckpt / "tokenizer.json").exists() else [sys.executable, llama / "convert_hf_to_gguf.py"]
            run([*shim, ckpt, "--outfile", target, "--outtype", GGUF_TYPE[fmt]],
                env={**os.environ, "PYTHONPATH": str(llama / "gguf-py")}, stdout=subprocess.DEVNULL)
    return target


def llama_bench(llama: Path, model: Path, prompt: int, decode: int) -> dict:
    env = {**os.environ, "GGML_VK_VISIBLE_DEVICES": os.environ.get("GGML_VK_VISIBLE_DEVICES", "0")}
    r = run([llama / "build" / "bin" / "llama-bench", "-m", model, "-p", prompt, "-n", decode, "-r", 1, "-ngl", 99,
             "-t", os.cpu_count(), "-o", "json"], env=env, capture_output=True, text=True)
    rows = json.loads(r.stdout)
    pick = {("prefill" if row["n_prompt"] else "decode"): row["avg_ts"] for row in rows}
    device = re.search(r"ggml_vulkan: 0 = (.+?) \|", r.stderr)
    return {**pick, "device": device[1].strip() if device else "?", "build": rows[0].get("build_commit", "?")}


def webmoe_speed(pkg: Path, prompt: int, decode: int) -> dict:
    run([sys.executable, "-m", "webmoe", "speed", pkg, "--prompt", prompt, "--tokens", decode, "--repeats", 1,
         "--json", pkg / "speed.json"], capture_output=True, text=True)
    s = json.loads((pkg / "speed.json").read_text())
    return {"prefill": s["prefill"]["median"], "decode": s["decode"]["median"], "device": s["adapter"],
            "share": s["bandwidth_share"], "bandwidth": s["bandwidth"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="f16,q8,q4")
    ap.add_argument("--rounds", type=int, default=3, help="measurements of each engine, alternating which goes first")
    ap.add_argument("--peers", type=Path, default=Path(os.environ.get("PEERS", "/tmp/webmoe-peers")))
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "bench-llama")
    ap.add_argument("--checkpoint", type=Path, help="a Hugging Face checkpoint to measure instead of the bench model")
    ap.add_argument("--prompt", type=int, default=PROMPT)
    ap.add_argument("--decode", type=int, default=DECODE)
    args = ap.parse_args()
    formats = args.formats.split(",")
    llama = build_llama(args.peers)
    ckpt = args.checkpoint.resolve() if args.checkpoint else write_checkpoint(args.work / "checkpoint")
    llama_ckpt = for_llama(ckpt, args.work) if args.checkpoint else ckpt
    name = ckpt.name if args.checkpoint else "bench"
    rows = []
    for fmt in formats:
        model = gguf(llama, llama_ckpt, fmt, args.work, keep_f16="f16" in formats)
        pkg = args.work / f"webmoe-{name}-{fmt}"
        if not (pkg / "manifest.json").exists():
            run([sys.executable, "-m", "webmoe", "convert", ckpt, pkg, "--dtype", fmt, "--force"],
                stdout=subprocess.DEVNULL)
        for i in range(args.rounds):                 # the engines alternate: who goes first changes each round
            if i % 2 == 0:
                peer = llama_bench(llama, model, args.prompt, args.decode)
                ours = webmoe_speed(pkg, args.prompt, args.decode)
            else:
                ours = webmoe_speed(pkg, args.prompt, args.decode)
                peer = llama_bench(llama, model, args.prompt, args.decode)
            rows.append({"format": fmt, "round": i + 1, "llama": peer, "webmoe": ours})
            print(f"{fmt} round {i + 1}: llama.cpp pp{args.prompt} {peer['prefill']:.2f} tg{args.decode} {peer['decode']:.2f}; "
                  f"webmoe {ours['prefill']:.2f} / {ours['decode']:.2f}", file=sys.stderr)
    first = rows[0]
    what = (f"{ckpt.name} ({json.loads((ckpt / 'config.json').read_text()).get('model_type')})" if args.checkpoint
            else "Mixtral-shaped bench model (72 M parameters, 8 experts top-2)")
    print(f"{what}, every expert resident; prompt {args.prompt}, decode {args.decode}; llama.cpp (build "
          f"{first['llama']['build']}, from the llama-cpp-python {LLAMA_CPP_PYTHON} sdist) on "
          f"{first['llama']['device']}; webmoe on {first['webmoe']['device']}; {platform.machine()}, "
          f"{os.cpu_count()} cores")
    print("| format (llama.cpp type) | round | llama.cpp prefill | webmoe prefill | ratio | llama.cpp decode | "
          "webmoe decode | ratio | webmoe share of bandwidth |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        p, o = r["llama"], r["webmoe"]
        print(f"| {r['format']} ({GGUF_TYPE[r['format']]}) | {r['round']} | {p['prefill']:.2f} | {o['prefill']:.2f} | "
              f"{o['prefill'] / p['prefill']:.1f}x | {p['decode']:.2f} | {o['decode']:.2f} | "
              f"{o['decode'] / p['decode']:.1f}x | {o['share']:.0%} of {o['bandwidth'] / 1e9:.1f} GB/s |")
    print(f"\nmedians of {args.rounds} rounds (min-max):")
    print("| format | llama.cpp prefill | webmoe prefill | ratio | llama.cpp decode | webmoe decode | ratio |")
    print("|---|---|---|---|---|---|---|")
    for fmt in formats:
        mine = [r for r in rows if r["format"] == fmt]
        cells = []
        for what in ("prefill", "decode"):
            theirs, ours = ([r[e][what] for r in mine] for e in ("llama", "webmoe"))
            cells += [spread(theirs), spread(ours), f"{statistics.median(ours) / statistics.median(theirs):.2f}x"]
        print(f"| {fmt} ({GGUF_TYPE[fmt]}) | " + " | ".join(cells) + " |")
    return 0


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


if __name__ == "__main__":
    sys.exit(main())
