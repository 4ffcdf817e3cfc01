import { describe, expect, it } from 'vitest';
import type { ChunkSink, UpstreamErrorInfo, Usage } from '../../../src/upstream/adapter.js';
import { openaiAdapter } from '../../../src/upstream/adapters/openai.js';

function collect() {
  const chunks: { json: string; content: boolean }[] = [];
  const usages: Usage[] = [];
  const errors: UpstreamErrorInfo[] = [];
  let ended = false;
  const sink: ChunkSink = {
    chunk: (json, content) => chunks.push({ json, content }),
    usage: (u) => usages.push(u),
    error: (e) => errors.push(e),
    end: () => (ended = true),
  };
  return { sink, chunks, usages, errors, ended: () => ended };
}

const ctx = { model: 'm', includeUsage: false, created: 1 };
const provider = { name: 'p', apiKey: 'sk-1', headers: { 'x-extra': 'y' }, anthropicVersion: '', defaultMaxTokens: 1 };

describe('openai adapter', () => {
  it('passes the body through untouched but for the model, with the provider key and headers', () => {
    const req = openaiAdapter.chatRequest({ model: 'fast', messages: [{ role: 'user', content: 'x' }], odd: { a: 1 } }, 'gpt-4o-mini', provider);
    expect(req.path).toBe('/chat/completions');
    expect(JSON.parse(req.body)).toEqual({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'x' }], odd: { a: 1 } });
    expect(req.headers.authorization).toBe('Bearer sk-1');
    expect(req.headers['x-extra']).toBe('y');
    expect(openaiAdapter.chatRequest({ model: 'f', messages: [] }, 'm', { ...provider, apiKey: undefined }).headers.authorization).toBeUndefined();
  });

  it('classifies chunks: role-only preamble is not content; text, tool calls and refusals are', () => {
    const c = collect();
    const t = openaiAdapter.streamTranslator(c.sink, ctx);
    const role = '{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}';
    t.event(undefined, role);
    t.event(undefined, '{"choices":[{"index":0,"delta":{"content":"Hi"}}]}');
    t.event(undefined, '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}');
    t.event(undefined, '{"choices":[{"index":0,"delta":{"refusal":"no"}}]}');
    t.event(undefined, '{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}');
    t.event(undefined, '{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}');
    t.event(undefined, '[DONE]');
    expect(c.chunks.map((x) => x.content)).toEqual([false, true, true, true, false, false]);
    expect(c.chunks[0]!.json).toBe(role); // relayed byte for byte, never re-serialised
    expect(c.usages).toEqual([{ prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 }]);
    expect(c.ended()).toBe(true);
  });

  it('drops non-JSON data events and reports an in-stream error object', () => {
    const c = collect();
    const t = openaiAdapter.streamTranslator(c.sink, ctx);
    t.event(undefined, 'not json at all');
    t.event(undefined, '42');
    t.event(undefined, '{"error":{"message":"overloaded","type":"server_error"}}');
    expect(c.chunks).toHaveLength(0);
    expect(c.errors[0]).toMatchObject({ message: 'overloaded', type: 'server_error' });
  });

  it('reads error bodies of every usual shape', () => {
    expect(openaiAdapter.errorInfo(400, '{"error":{"message":"bad","type":"invalid_request_error","param":"x","code":"c"}}')).toEqual({
      status: 400,
      message: 'bad',
      type: 'invalid_request_error',
      param: 'x',
      code: 'c',
    });
    expect(openaiAdapter.errorInfo(500, '{"error":"boom"}').message).toBe('boom');
    expect(openaiAdapter.errorInfo(422, '{"detail":"nope"}')).toMatchObject({ message: 'nope', type: 'invalid_request_error' });
    expect(openaiAdapter.errorInfo(503, '<html>gateway</html>')).toMatchObject({ message: '<html>gateway</html>', type: 'server_error' });
    expect(openaiAdapter.errorInfo(502, 'x'.repeat(5000)).message).toBe('upstream answered HTTP 502');
  });
});
