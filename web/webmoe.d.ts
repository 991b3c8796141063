// Types of webmoe's browser API (webmoe.js): what `import * as webmoe from "webmoe"` gives an app.
// tsc --noEmit checks an app written against them in the tests (tests/test_npm_package.py).

/** Where load() finds Hub repositories (hf://ORG/REPO[@REVISION]). */
export declare const env: {
  /** The Hub's address (default https://huggingface.co/): a mirror, or a static folder laid out as the Hub's. */
  remoteHost: string;
  /** A repository's files at a revision, below remoteHost (default "{repo}/resolve/{revision}/"). */
  remotePathTemplate: string;
};

export type ChatRole = "system" | "user" | "assistant";
export interface ChatMessage { role: ChatRole; content: string; }
/** Text, token ids, or chat messages rendered with the model's chat template. */
export type Prompt = string | number[] | ChatMessage[];

export type LoadProgress =
  | { stage: "download"; loaded: number; total: number; shards: Record<string, string> }
  | { stage: "compile"; done: number; total: number }
  | { stage: "upload"; loaded: number; total: number };

export interface LoadOptions {
  onProgress?: (progress: LoadProgress) => void;
  /** The GPU device is gone (driver reset, tab in the background too long): load the model again. */
  onDeviceLost?: (message: string) => void;
  /** A Worker the app made whose module imports "webmoe/worker"; default: webmoe starts its own. */
  worker?: Worker;
  /** KV cache rows (default 2048, at most the model's context). */
  maxSeqLen?: number;
  /** Tokens one forward pass runs at most (default 64). */
  chunkTokens?: number;
  /** GPU memory for routed experts, in bytes. */
  expertCacheBytes?: number;
  /** In-memory cache of expert shards while paging, in bytes (default 256 MiB). */
  memoryCacheBytes?: number;
  /** [layer, expert] pairs never evicted from the GPU. */
  pinnedExperts?: Array<[number, number]>;
  observeRouting?: boolean;
  prefetch?: boolean;
  maxBinding?: number;
  /** The plan variant to run: "gpu" (the plan's own steps) or "cpu" (lane rows, for WebGPU on the processor);
   * default: "cpu" on a fallback adapter (SwiftShader, WARP), else "gpu". */
  adapterClass?: "gpu" | "cpu";
  /** The manifest's sha256 (as `webmoe info` prints it): any other package is refused. */
  digest?: string;
  /** Download the dense shards now and each expert the first time the router asks for it. */
  expertsOnDemand?: boolean;
  /** With expertsOnDemand: the most this model keeps in OPFS, in bytes. */
  opfsBudgetBytes?: number;
  /** With expertsOnDemand: the share of routed tokens whose most-used experts come with the dense shards. */
  hotExperts?: number;
  backgroundDownload?: boolean;
  storage?: "auto" | "opfs" | "memory";
  /** A URL to read the kernels from (default: those this build carries). */
  shaderBase?: string | URL;
}

/** OpenAI's response_format: the answer is JSON (any object, or matching the schema), by constrained decoding. */
export type ResponseFormat =
  | { type: "text" }
  | { type: "json_object" }
  | { type: "json_schema"; json_schema: { name: string; description?: string; schema?: Record<string, unknown>; strict?: boolean | null } };

export interface GenerateOptions {
  maxNewTokens?: number;
  /** 0: greedy. */
  temperature?: number;
  topP?: number;
  seed?: number;
  stop?: string[];
  responseFormat?: ResponseFormat;
}

export interface Token { id: number; text: string; }

export interface ChatCompletionRequest {
  messages: ChatMessage[];
  model?: string;
  max_tokens?: number;
  max_completion_tokens?: number;
  temperature?: number;
  top_p?: number;
  seed?: number;
  stop?: string | string[];
  stream?: boolean;
  stream_options?: { include_usage?: boolean };
  response_format?: ResponseFormat;
}

export type FinishReason = "stop" | "length";

export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  extra: { prefill_tokens_per_s: number | null; decode_tokens_per_s: number | null; time_to_first_token_s: number };
}

export interface ChatCompletion {
  id: string;
  object: "chat.completion";
  created: number;
  model: string;
  usage: CompletionUsage;
  choices: Array<{ index: number; message: { role: "assistant"; content: string }; finish_reason: FinishReason }>;
}

export interface ChatCompletionChunk {
  id: string;
  object: "chat.completion.chunk";
  created: number;
  model: string;
  choices: Array<{ index: number; delta: { role?: "assistant"; content?: string }; finish_reason: FinishReason | null }>;
  /** Only on the last chunk, with stream_options.include_usage. */
  usage?: CompletionUsage;
}

export interface CachedModel { id: string; url: string | null; name: string; complete: boolean; bytes: number; }

export interface Engine {
  readonly handle: number;
  readonly adapter: string;
  /** The plan variant it runs: "cpu" on a fallback adapter (WebGPU on the processor), else "gpu". */
  readonly adapterClass: "gpu" | "cpu";
  readonly family: string;
  readonly description: string;
  /** null, or why nothing of the model is kept in the browser (it is downloaded again next visit). */
  readonly ephemeral: string | null;
  readonly config: Record<string, unknown>;
  readonly chat: {
    completions: {
      create(request: ChatCompletionRequest & { stream: true }): Promise<AsyncIterable<ChatCompletionChunk>>;
      create(request: ChatCompletionRequest & { stream?: false }): Promise<ChatCompletion>;
    };
  };
  tokenize(prompt: Prompt): Promise<number[]>;
  /** [ids.length * vocab] */
  logits(ids: number[]): Promise<Float32Array>;
  generate(prompt: Prompt, options?: GenerateOptions): AsyncGenerator<Token, void, undefined>;
  stop(): Promise<void>;
  unload(): Promise<void>;
  expertStats(): Promise<Record<string, unknown>>;
  /** Prefill and decode tokens/s on this device and where a decoded token's time goes (ms); decodes random
   * tokens into the KV cache, so call it between generations. */
  speed(options?: SpeedOptions): Promise<SpeedReport>;
}

export interface SpeedOptions {
  /** prefill tokens (128; at most maxSeqLen - tokens - 1) */
  prompt?: number;
  /** decoded tokens per repetition (32) */
  tokens?: number;
  repeats?: number;
  /** also time every dispatch with timestamp queries (the adapter's timestamp-query feature) */
  profile?: boolean;
  seed?: number;
}

export interface SpeedSpread { median: number; min: number; max: number; runs: number[]; }

export interface SpeedReport {
  adapter: string;
  /** the plan variant that ran (adapterClass) */
  plan_variant: "gpu" | "cpu";
  prompt: number;
  tokens: number;
  experts_resident: boolean;
  /** tokens/s */
  prefill: SpeedSpread;
  decode: SpeedSpread;
  per_token_ms: { decode: number; encode: number; wait: number; round_trip: number; generate: number; kernels?: number };
  subgroups: number;
  formats: Record<string, string>;
  profile?: Record<"prefill" | "decode", { role: string; kernel: string; calls: number; ms: number; share: number }[]>;
}

/** source: a manifest's URL, the URL of the folder holding it, or hf://ORG/REPO[@REVISION]. */
export declare function load(source: string | URL, options?: LoadOptions): Promise<Engine>;
export declare function listCached(options?: { worker?: Worker }): Promise<CachedModel[]>;
export declare function deleteCached(id: string, options?: { worker?: Worker }): Promise<void>;

export declare class WebmoeError extends Error { readonly code: string; }
/** Malformed, corrupt, of another format version, too big, or unreachable. */
export declare class PackageError extends WebmoeError { readonly code: "package_error"; }
export declare class PlanError extends WebmoeError { readonly code: "plan_error"; }
export declare class ShaderError extends WebmoeError { readonly code: "shader_error"; }
export declare class ExpertCacheError extends WebmoeError { readonly code: "expert_cache_error"; }
export declare class PromptError extends WebmoeError { readonly code: "prompt_error"; }
export declare class OptionError extends WebmoeError { readonly code: "option_error"; }
export declare class DeviceError extends WebmoeError { readonly code: "device_error"; }
export declare class QuotaError extends WebmoeError { readonly code: "quota_error"; }
export declare class WorkerError extends WebmoeError { readonly code: "worker_error"; }
