"""The public native API: load a package, compute logits, generate text."""
from __future__ import annotations

import time

import numpy as np

from webmoe.format.plan_variants import plan_for

from .batch import Generator
from .device import Gpu, open_gpu
from .errors import OptionError, PromptError
from .executor import STORAGE, Executor, Readback, padded
from .expert_cache import ExpertCache, expert_segments
from .generation import GREEDY, GenerationConfig, Sampling, Token  # noqa: F401  (Token: this API's)
from .host_pins import HostPins
from .memory import Budget, gib, package_budget
from .options import EngineOptions
from .package import Package
from .prefetch import predictor_plan
from .resources import check_resources, plan_bytes
from .routing import apply_routing, describe_routing
from .tokenizer import TextTokenizer


class Engine:
    def __init__(self, package: Package, gpu: Gpu, options: EngineOptions = EngineOptions()):
        self.package, self.gpu, self.options = package, gpu, options
        cfg = package.config
        self.vocab_size = cfg["vocab_size"]
        self.max_seq_len = min(options.max_seq_len or 4096, cfg["max_position_embeddings"])
        self.chunk = min(options.chunk_tokens, self.max_seq_len)
        max_batch = options.max_batch
        if max_batch > self.chunk:
            raise OptionError(f"max_batch must lie in [1, {self.chunk}] (the chunk of tokens one pass runs)")
        self.max_batch = max_batch          # sequences that can decode together, each in its own KV cache rows
        rows = self.max_seq_len * max_batch                    # KV cache rows: slot b holds rows b * L ..
        self.tokenizer = TextTokenizer(package)
        # the plan for this adapter (its steps' geometry) with the routing rule asked for
        self.adapter_class = options.adapter_class or gpu.adapter_class
        plan = apply_routing(plan_for(package.manifest["plan"], self.adapter_class), options.routing)
        self.plan = plan
        self.routing = describe_routing(options.routing)
        self.io = plan["io"]                      # the buffers of token ids, places, logits and the sampled token
        check_resources(plan, gpu.max_binding, self.chunk, rows)
        self.memory = plan_bytes(plan, self.chunk, rows)       # buffers, kv_cache, kv_per_token
        if options.expert_cache_bytes is None:
            budget = package_budget(plan, gpu.is_cpu, self.chunk, rows)
        else:
            budget = Budget(options.expert_cache_bytes, f"{gib(options.expert_cache_bytes)} asked for")
        device = gpu.device
        self.weights = {}
        for name, t in package.manifest["tensors"].items():
            buf = device.create_buffer(size=padded(t["size"]), usage=STORAGE, label=name)
            gpu.upload(buf, 0, package.tensor_bytes(name))
            self.weights[name] = buf
        pins = HostPins(package, list(options.host_pinned_experts)) if options.host_pinned_experts else None
        self.experts = ExpertCache(gpu, package, budget, options.pinned_experts, options.observe_routing, pins)
        self.segments = expert_segments(plan)
        self._route_rb = Readback(device, 2 * self.chunk * package.moe["top_k"] * 4)
        self.executor = Executor(gpu, plan, self.weights, self.experts.buffers, {"T": self.chunk, "S": rows})
        self.prefetch = options.prefetch and self.experts.paging and len(self.segments) > 1   # something to predict
        self._predict = {}
        if self.prefetch:
            moe = package.moe
            predictor, self._predict = predictor_plan(plan, moe["num_experts"], moe["top_k"])
            self.predictor = Executor(gpu, predictor, self.executor.buffers, {}, {"T": self.chunk, "S": rows})
        # one sampler per batch row: the plan's sampler steps reading logits row b, each with its own params
        self.samplers = [Executor(gpu, {"buffers": {}, "steps": [{**st, "params": {**st["params"], "row": b}}
                                                                for st in plan["sampler"]]},
                                  self.executor.buffers, {}, {}) for b in range(max_batch)]
        self._mask_words = plan["buffers"][self.io["token_mask"]]["shape"][1]   # u32 words of a token_mask row
        self._logits_rb = Readback(device, self.chunk * self.vocab_size * 4)
        self._token_rb = Readback(device, 4 * max_batch)
        self.profiler = None   # an engine/profiler.py Profiler times every dispatch (webmoe speed --profile)
        # the last decode() or prefill(): seconds recording and submitting its commands (the host's share, and
        # the per-layer read-backs when experts are paged) and from its last submission to the sampled tokens
        # in hand (the adapter's work and the round trip); webmoe speed reports them
        self.last_step = {"encode_s": 0.0, "wait_s": 0.0}

    @classmethod
    def load(cls, path, options: EngineOptions | None = None, **changes) -> "Engine":
        """Opens a package and uploads it, with `options` (engine/options.py: EngineOptions, every field
        optional) and any of its fields given by name: Engine.load(path, max_batch=8)."""
        options = (options or EngineOptions()).but(**changes)
        package = Package(path, options.digest)
        gpu = open_gpu(options.adapter, options.max_binding)
        return cls(package, gpu, options)

    def describe(self) -> str:
        """One line on what was loaded where, for a tool to print (the library prints nothing)."""
        m = self.memory
        seqs = f"{self.max_batch} sequences of " if self.max_batch > 1 else ""
        routing = "" if self.routing.startswith("the model's") else f"; routing: {self.routing}"
        return (f"{self.package.manifest['family']} on {self.gpu.description}; KV cache {gib(m['kv_cache'])} for "
                f"{seqs}{self.max_seq_len} tokens ({m['kv_per_token']} bytes per token); {self.experts.describe()}"
                f"{routing}")

    def expert_stats(self) -> dict:
        """The expert cache's statistics, per layer and in total."""
        return self.experts.report()

    @property
    def adapter(self) -> str:
        return self.gpu.description

    def close(self) -> None:
        """Gives back the engine's GPU memory and its device's polling thread now; the engine cannot run
        afterwards. (wgpu-py's device refers to itself, so without close() they wait for Python's cyclic
        collector: a server that swaps models held every old device until the collector ran.)"""
        self.gpu.device.destroy()
        self.package.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- forward --------------------------------------------------------------------------------------

    def _check_ids(self, ids) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
            raise PromptError("token ids must be a non-empty 1-D list of integers")
        if arr.min() < 0 or arr.max() >= self.vocab_size:
            raise PromptError(f"token ids must lie in [0, {self.vocab_size})")
        if arr.size > self.max_seq_len:
            raise PromptError(f"{arr.size} tokens exceed the maximum sequence length {self.max_seq_len}")
        return arr.astype(np.uint32)

    def _forward(self, ids: np.ndarray, places: tuple[np.ndarray, np.ndarray], logit_row0: int, n_logits: int):
        """Runs ids (one chunk) at places (positions, cache_rows) [T] u32; returns an encoder holding the last
        commands, not submitted, for the caller to add its read-back to. While every expert is resident
        this is one submission with no read-back; with paging, each MoE layer reads back its chosen
        experts, which are made resident (in batches if they do not all fit) before its expert kernels run."""
        device, ex = self.gpu.device, self.executor
        device.queue.write_buffer(ex.buffers[self.io["ids"]], 0, ids)
        device.queue.write_buffer(ex.buffers[self.io["positions"]], 0, np.ascontiguousarray(places[0], np.uint32))
        device.queue.write_buffer(ex.buffers[self.io["cache_rows"]], 0, np.ascontiguousarray(places[1], np.uint32))
        env = {"T": len(ids), "logit_row0": logit_row0, "n_logits": n_logits}
        ex.write_params(env)
        if self.prefetch:
            self.predictor.write_params(env)
        encoder, done = device.create_command_encoder(), 0
        cache = self.experts
        K = self.package.moe["top_k"]
        size = len(ids) * K * 4
        for seg in self.segments:
            ex.encode_range(encoder, env, done, seg.start, profiler=self.profiler)
            done = seg.stop
            if not cache.reads_routing:           # every expert resident: no read-back
                ex.encode_range(encoder, env, seg.start, seg.stop, cache.layer_banks[seg.layer], cache.bank_env,
                                profiler=self.profiler)
                continue
            encoder.copy_buffer_to_buffer(ex.buffers[seg.topk_ids], 0, self._route_rb.buffer, 0, size)
            predict = self._predict.get(seg.layer)
            if predict:                     # the next MoE layer's router on this layer's router input
                self.predictor.encode_range(encoder, env, predict[0], predict[1], profiler=self.profiler)
                encoder.copy_buffer_to_buffer(self.predictor.buffers["pred_ids"], 0, self._route_rb.buffer, size, size)
            device.queue.submit([encoder.finish()])
            t0 = time.perf_counter()
            routed = np.frombuffer(self._route_rb.read(2 * size if predict else size), np.uint32)
            chosen = routed[:len(ids) * K]
            cache.stats[seg.layer].wait_s += time.perf_counter() - t0
            cache.record(seg.layer, chosen.reshape(len(ids), K))
            for batch in cache.batches(seg.layer, chosen):
                encoder = device.create_command_encoder()
                ex.encode_range(encoder, env, seg.start, seg.stop, cache.banks_of(seg.layer, batch), cache.bank_env,
                                profiler=self.profiler)
                device.queue.submit([encoder.finish()])
            if predict:
                cache.prefetch(predict[2], routed[len(ids) * K:])
            encoder = device.create_command_encoder()
        ex.encode_range(encoder, env, done, len(ex.steps), profiler=self.profiler)
        return encoder

    def _places(self, slot: int, pos0: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions pos0 .. pos0 + n of the sequence in KV slot `slot`, and their cache rows."""
        if not 0 <= slot < self.max_batch:
            raise PromptError(f"KV slot {slot} is outside [0, {self.max_batch})")
        if pos0 < 0 or pos0 + n > self.max_seq_len:
            raise PromptError(f"{pos0 + n} tokens exceed the maximum sequence length {self.max_seq_len}")
        at = np.arange(pos0, pos0 + n, dtype=np.uint32)
        return at, slot * self.max_seq_len + at

    def _chunks(self, slot: int, ids: np.ndarray, pos0: int, every_logit: bool):
        """The one chunk loop: runs ids into KV slot `slot` at positions pos0 .., a chunk per pass. every_logit:
        returns the logits of every token [n, vocab]; else the last pass's encoder, not submitted, with the
        last token's logits in row 0 (for the sampler)."""
        self._places(slot, pos0, len(ids))       # the whole range, before any chunk runs
        device, out = self.gpu.device, []
        for start in range(0, len(ids), self.chunk):
            chunk = ids[start:start + self.chunk]
            last = start + self.chunk >= len(ids)
            places = self._places(slot, pos0 + start, len(chunk))
            if every_logit:
                encoder = self._forward(chunk, places, 0, len(chunk))
                size = len(chunk) * self.vocab_size * 4
                encoder.copy_buffer_to_buffer(self.executor.buffers[self.io["logits"]], 0, self._logits_rb.buffer, 0,
                                              size)
                device.queue.submit([encoder.finish()])
                out.append(np.frombuffer(self._logits_rb.read(size), np.float32).reshape(len(chunk), self.vocab_size))
                continue
            encoder = self._forward(chunk, places, len(chunk) - 1, 1 if last else 0)
            if not last:
                device.queue.submit([encoder.finish()])
        return np.concatenate(out) if every_logit else encoder

    def logits(self, token_ids, pos0: int = 0, slot: int = 0) -> np.ndarray:
        """Logits [T, vocab] of token_ids placed at positions pos0 .. of the sequence in KV slot `slot` (pos0 =
        0: a fresh sequence; later positions attend to what that slot's earlier calls left)."""
        return self._chunks(slot, self._check_ids(token_ids), pos0, every_logit=True)

    # --- decoding (engine/batch.py's BatchDecoder drives these, for one sequence or many) -------------

    def prefill(self, slot: int, token_ids, pos0: int, sampling: Sampling = GREEDY, return_logits: bool = False):
        """Appends tokens to the sequence in KV slot `slot` (positions pos0 ..) and samples the next token on
        the GPU from the last one's logits; the only read-back is the token id (with return_logits, also
        those logits, before any mask: (id, [vocab]))."""
        t0 = time.perf_counter()
        encoder = self._chunks(slot, self._check_ids(token_ids), pos0, every_logit=False)
        return self._sample(encoder, [sampling], return_logits, t0)[0]

    def decode(self, rows: list[tuple[int, int, int]], sampling: list[Sampling],
               return_logits: bool = False) -> list:
        """One forward pass for several sequences, a token each: rows [(token, position, slot)], a Sampling
        per row. Returns the next token of each (with return_logits, (token, logits [vocab]) pairs)."""
        if not 0 < len(rows) <= self.max_batch or len({slot for _, _, slot in rows}) != len(rows):
            raise PromptError(f"a decode pass takes 1 to {self.max_batch} rows of distinct slots")
        t0 = time.perf_counter()
        ids = self._check_ids([t for t, _, _ in rows])
        positions = np.array([p for _, p, _ in rows], np.uint32)
        slots = np.array([s for _, _, s in rows], np.uint32)
        if positions.max() >= self.max_seq_len or slots.max() >= self.max_batch:
            raise PromptError("a decode row lies outside the KV cache")
        encoder = self._forward(ids, (positions, slots * self.max_seq_len + positions), 0, len(rows))
        return self._sample(encoder, sampling, return_logits, t0)

    def _sample(self, encoder, sampling: list[Sampling], return_logits: bool, t0: float) -> list:
        """Samples logits rows 0 .. B on the GPU (row b by sampler b, after its mask when it has one),
        reads back the B tokens. t0: when the step began (for last_step)."""
        B, V = len(sampling), self.vocab_size
        device = self.gpu.device
        if return_logits:             # before the samplers, which work in the logits buffer
            encoder.copy_buffer_to_buffer(self.executor.buffers[self.io["logits"]], 0, self._logits_rb.buffer, 0,
                                          B * V * 4)
        for b, s in enumerate(sampling):
            if s.mask is not None:    # queued writes land before the submit below
                device.queue.write_buffer(self.executor.buffers[self.io["token_mask"]], b * self._mask_words * 4,
                                          self._mask_row(s.mask))
            self.samplers[b].encode(encoder, {"temperature": s.temperature, "top_p": s.top_p, "u": s.u,
                                              "masked": int(s.mask is not None),
                                              "sampling": int(s.temperature > 0)}, profiler=self.profiler)
            encoder.copy_buffer_to_buffer(self.executor.buffers[self.io["token"]], 0, self._token_rb.buffer, 4 * b, 4)
        t1 = time.perf_counter()
        device.queue.submit([encoder.finish()])
        tokens = np.frombuffer(self._token_rb.read(4 * B), np.uint32).tolist()
        self.last_step = {"encode_s": t1 - t0, "wait_s": time.perf_counter() - t1}
        if not return_logits:
            return tokens
        logits = np.frombuffer(self._logits_rb.read(B * V * 4), np.float32).reshape(B, V).copy()
        return list(zip(tokens, logits))

    def _mask_row(self, mask) -> np.ndarray:
        row = np.ascontiguousarray(mask, dtype=np.uint32)
        if row.shape != (self._mask_words,):
            raise PromptError(f"a token mask has {self._mask_words} u32 words (one bit per token), not {row.shape}")
        return row

    # --- generation -----------------------------------------------------------------------------------

    def generate(self, prompt, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, stop=None, logprobs: int | None = None,
                 grammar: str | None = None) -> Generator:
        """Yields each new token (a Token) as it is produced. prompt: text, token ids, or chat messages.
        temperature 0 is greedy; stop: strings that end generation (not included in the text); logprobs:
        give each token its log-probability under the model (before temperature, top-p and grammar) and
        that many most likely alternatives (each token's logits are then read back too); grammar: the
        text must match it (engine/constraint.py's json_grammar(schema) for JSON), and generation ends
        when the grammar is complete. The returned Generator also tells finish_reason and token counts
        once iterated."""
        config = GenerationConfig(max_new_tokens, temperature, top_p, seed, stop, logprobs, grammar)
        return Generator(self, config, self.prompt_ids(prompt))

    def prompt_ids(self, prompt) -> np.ndarray:
        """A prompt (text, token ids or chat messages) as token ids, checked against the vocabulary and the
        maximum sequence length."""
        return self._check_ids(self.tokenizer.prompt_ids(prompt))
