// A small program against the public API of the realm-web package, type-checked (never run) by
// package.test.js with `tsc --noEmit` after the package is packed and installed into a fresh folder.
// The @ts-expect-error lines fail the check if the declarations stop rejecting a wrong use.

import {
  AbortError,
  type ChatCompletion,
  type ChatCompletionChunk,
  ContextLengthError,
  createEngine,
  DeviceError,
  DeviceLostError,
  DownloadError,
  type Engine,
  type GenerateResult,
  type InitProgressReport,
  IntegrityError,
  listModels,
  ModelError,
  type ModelRecord,
  NoWebGPUError,
  OutOfMemoryError,
  RealmError,
  UnknownModelError,
} from "realm-web";

export async function demo(): Promise<string> {
  const extra: ModelRecord = { id: "mine", url: "/models/mine.gguf", sha256: null, size: 1234 };
  const records: ModelRecord[] = await listModels({ models: [extra] });
  const engine: Engine = await createEngine(records[0].id, {
    initProgressCallback: (p: InitProgressReport) => console.log(p.progress.toFixed(2), p.phase, p.text),
    appConfig: { models: [extra], useCache: true, n_ctx: 512 },
    useWorker: true,
  });
  const messages = [{ role: "user", content: "What is the capital of France?" }];

  // streamed: an async iterable of chunks, usage on the last one
  const stream = await engine.chat.completions.create({ messages, stream: true, temperature: 0, max_tokens: 16 });
  let streamed = "";
  for await (const chunk of stream) {
    const c: ChatCompletionChunk = chunk;
    streamed += c.choices[0].delta.content ?? "";
    if (c.usage) console.log(c.usage.completion_tokens, c.usage.decode_tokens_per_s);
  }

  // not streamed: one ChatCompletion
  const whole: ChatCompletion = await engine.chat.completions.create({ messages, temperature: 0, stop: ["\n"] });
  const answer: string = whole.choices[0].message.content;
  const tokens: number = whole.usage.total_tokens;

  // a raw prompt, with a per-token callback and cancellation
  const ctrl = new AbortController();
  let out: GenerateResult | null = null;
  try {
    out = await engine.generate("The capital of France is", {
      maxTokens: 8, temperature: 0, onToken: (piece: string) => console.log(piece), signal: ctrl.signal,
    });
  } catch (e) {
    if (e instanceof AbortError) console.log(e.partialText, e.usage?.completion_tokens);
    else if (e instanceof IntegrityError) console.log(e.expected, e.actual, e.url);
    else if (e instanceof DownloadError) console.log(e.status);
    else if (e instanceof UnknownModelError) console.log(e.modelId, e.knownIds.join(", "));
    else if (e instanceof DeviceLostError || e instanceof OutOfMemoryError) console.log("reload", e.code);
    else if (e instanceof DeviceError) console.log(e.missing);
    else if (e instanceof NoWebGPUError || e instanceof ModelError || e instanceof ContextLengthError) throw e;
    else if (e instanceof RealmError) console.log(e.code, e.pythonType);
  }
  const reason: "stop" | "length" | undefined = out?.finishReason;

  // LoRA adapters: loaded beside the model, chosen per request
  const lora: string = await engine.loadLora("realm-tiny-facts-lora-fiction", { name: "fiction" });
  const adapted = await engine.chat.completions.create({ messages, lora: [{ id: lora, scale: 0.5 }] });
  const loras = await engine.listLoras();
  console.log(adapted.choices[0].message.content, loras[lora]?.rank);
  await engine.generate("x", { lora: [{ id: lora }] });
  await engine.unloadLora(lora);
  // @ts-expect-error lora is a list of {id, scale}
  await engine.generate("x", { lora: "fiction" });

  // @ts-expect-error with stream: true the result is chunks, not a ChatCompletion
  const wrong: ChatCompletion = await engine.chat.completions.create({ messages, stream: true });
  // @ts-expect-error maxTokens is a number
  await engine.generate("x", { maxTokens: "8" });
  // @ts-expect-error messages are required
  await engine.chat.completions.create({ temperature: 0 });

  await engine.unload();
  return `${streamed} ${answer} ${tokens} ${out?.text} ${reason} ${wrong.id}`;
}
