// A web app as its developer writes it against the npm package (tests/test_npm_package.py builds it with
// Vite and checks it with tsc --noEmit): load a package from the URL in ?model=, chat, report.
import * as webmoe from "webmoe";
import type { ChatCompletion, CompletionUsage, LoadProgress } from "webmoe";

const out = document.querySelector<HTMLPreElement>("#out")!;
const params = new URLSearchParams(location.search);

async function main(): Promise<void> {
  const stages = new Set<LoadProgress["stage"]>();
  const t0 = performance.now();
  const engine = await webmoe.load(params.get("model")!, { onProgress: (p) => stages.add(p.stage), storage: "memory" });
  const loadSeconds = (performance.now() - t0) / 1000;
  const messages = [{ role: "user" as const, content: params.get("prompt") ?? "Hello" }];
  const reply: ChatCompletion = await engine.chat.completions.create({ messages, max_tokens: 16, temperature: 0 });
  let streamed = "";
  let streamUsage: CompletionUsage | undefined;
  const stream = await engine.chat.completions.create({ messages, max_tokens: 16, temperature: 0, stream: true,
                                                        stream_options: { include_usage: true } });
  for await (const chunk of stream) {
    streamed += chunk.choices[0]?.delta.content ?? "";
    if (chunk.usage) streamUsage = chunk.usage;
  }
  // structured output: the grammar library is loaded now, from beside the worker the bundler emitted
  const json: ChatCompletion = await engine.chat.completions.create({
    messages, max_tokens: 64, temperature: 0,
    response_format: { type: "json_schema", json_schema: { name: "cast", schema: JSON.parse(params.get("schema")!) } } });
  let missing: string | null = null;
  try {
    await webmoe.load(new URL("no-such-model/", params.get("model")!));
  } catch (err) {
    if (err instanceof webmoe.PackageError) missing = err.code;
  }
  await engine.unload();
  out.dataset.result = JSON.stringify({ text: reply.choices[0].message.content, streamed, usage: reply.usage, streamUsage,
                                        json: json.choices[0].message.content, stages: [...stages], missing, adapter: engine.adapter,
                                        loadSeconds });
}

main().catch((err: Error) => { out.dataset.result = JSON.stringify({ error: `${err.name}: ${err.message}` }); });
