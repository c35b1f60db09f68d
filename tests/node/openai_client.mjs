// Drives a running tpo with the official `openai` client library, streaming
// and not, chat and completions, and checks what comes back.
// usage: node openai_client.mjs http://127.0.0.1:PORT/v1
import OpenAI from "openai";
import assert from "node:assert/strict";

const client = new OpenAI({ baseURL: process.argv[2], apiKey: "unused", maxRetries: 0 });
const messages = [{ role: "user", content: "Hello from the openai client" }];

// Non-streaming chat.
const full = await client.chat.completions.create({ model: "tpo-mock", messages, max_tokens: 12 });
assert.equal(full.object, "chat.completion");
assert.equal(full.choices[0].message.role, "assistant");
assert.ok(full.choices[0].message.content.length > 0, "empty content");
assert.equal(full.choices[0].finish_reason, "length");
assert.equal(full.usage.completion_tokens, 12);

// Streaming chat: the same prompt gives the same text, token by token.
const stream = await client.chat.completions.create({
  model: "tpo-mock", messages, max_tokens: 12, stream: true,
  stream_options: { include_usage: true },
});
let text = "", finish = null, usage = null, chunks = 0;
for await (const chunk of stream) {
  chunks++;
  if (chunk.usage) usage = chunk.usage;
  const c = chunk.choices[0];
  if (!c) continue;
  text += c.delta?.content ?? "";
  if (c.finish_reason) finish = c.finish_reason;
}
assert.equal(text, full.choices[0].message.content, "stream and non-stream differ");
assert.equal(finish, "length");
assert.ok(chunks >= 12, `only ${chunks} chunks`);
assert.equal(usage?.completion_tokens, 12);

// Legacy completions, both ways.
const comp = await client.completions.create({ model: "tpo-mock", prompt: "Say hi", max_tokens: 5 });
assert.equal(comp.object, "text_completion");
assert.ok(comp.choices[0].text.length > 0);
// Without stream_options.include_usage no usage chunk comes: every chunk has
// a choice, as clients that read choices[0] of each chunk expect.
const cs = await client.completions.create({ model: "tpo-mock", prompt: "Say hi", max_tokens: 5, stream: true });
let ctext = "";
for await (const chunk of cs) {
  assert.equal(chunk.choices.length, 1, `a chunk without a choice: ${JSON.stringify(chunk)}`);
  assert.ok(!chunk.usage, "usage chunk nobody asked for");
  ctext += chunk.choices[0].text;
}
assert.equal(ctext, comp.choices[0].text);

// Models, and a clean error for a bad request.
const models = await client.models.list();
assert.ok(models.data.some((m) => m.id === "tpo-mock"), "tpo-mock not listed");
await assert.rejects(
  client.chat.completions.create({ model: "tpo-mock", messages: [] }),
  (e) => e.status === 400 && /messages/.test(e.message),
);
console.log("openai_client: streaming and non-streaming chat and completions ok");
