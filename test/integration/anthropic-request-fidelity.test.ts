/**
 * The OpenAI Chat Completions request as the gateway translates it for an `anthropic` upstream (SPEC §4: system,
 * tools/tool_calls, images translated; README "Anthropic upstreams"), at edges the other Anthropic suites do not
 * reach. The mock below is a Messages API that applies the rules these edges run into, each answered with the
 * real API's 400 wording; a request that reaches it is checked, and what the client gets is read over HTTP.
 */
import type { ServerResponse } from 'node:http';
import { beforeAll, describe, expect, it } from 'vitest';
import { closeAfterAll } from '../helpers/cleanup.js';
import { PNG_1PX } from '../helpers/images.js';
import { postChat, type Posted, type TestGateway, startGateway } from '../helpers/gateway.js';
import { sendJson, startMock, type Received } from '../helpers/mock-upstream.js';

type Json = Record<string, unknown>;

const track = closeAfterAll();

const isObj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const blocksOf = (content: unknown): Json[] => (Array.isArray(content) ? content.filter(isObj) : []);

/** The image type the bytes say, as the Messages API reads them (it checks the declared type against them). */
function sniffImage(base64: string): string | undefined {
  const b = Buffer.from(base64.slice(0, 24), 'base64');
  if (b[0] === 0x89 && b.toString('latin1', 1, 4) === 'PNG') return 'image/png';
  if (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'image/jpeg';
  if (b.toString('latin1', 0, 4) === 'GIF8') return 'image/gif';
  if (b.toString('latin1', 0, 4) === 'RIFF' && b.toString('latin1', 8, 12) === 'WEBP') return 'image/webp';
  return undefined;
}

function imageError(block: Json, at: string): string | undefined {
  const source = block.source;
  if (!isObj(source) || source.type !== 'base64' || typeof source.data !== 'string') return undefined;
  const actual = sniffImage(source.data);
  if (actual === undefined || actual === source.media_type) return undefined;
  return `${at}.image.source.base64: The image was specified using the ${String(source.media_type)} media type, but the image appears to be a ${actual} image`;
}

/** The Messages API's rules the tests below run into, in its own words; undefined for a request it takes. */
function refusal(body: Json): string | undefined {
  const names = new Set<string>();
  for (const t of Array.isArray(body.tools) ? body.tools.filter(isObj) : []) {
    if (names.has(String(t.name))) return 'tools: Tool names must be unique.';
    names.add(String(t.name));
  }
  const messages = Array.isArray(body.messages) ? body.messages.filter(isObj) : [];
  for (const [i, m] of messages.entries()) {
    for (const [j, b] of blocksOf(m.content).entries()) {
      const at = `messages.${i}.content.${j}`;
      if (b.type === 'image') {
        const e = imageError(b, at);
        if (e) return e;
      }
      if (b.type !== 'tool_result') continue;
      // A string content is one text block, held to the text block rule.
      if (typeof b.content === 'string' && b.content !== '' && b.content.trim() === '')
        return 'messages: text content blocks must contain non-whitespace text';
      for (const [k, inner] of blocksOf(b.content).entries()) {
        const e = inner.type === 'image' ? imageError(inner, `${at}.tool_result.content.${k}`) : undefined;
        if (e) return e;
      }
    }
  }
  // Every tool_use answered exactly once, first thing in the next turn.
  for (const [i, m] of messages.entries()) {
    if (m.role !== 'assistant') continue;
    const uses = blocksOf(m.content)
      .filter((b) => b.type === 'tool_use')
      .map((b) => String(b.id));
    if (uses.length === 0) continue;
    const results: string[] = [];
    for (const b of blocksOf(messages[i + 1]?.content)) {
      if (b.type !== 'tool_result') break;
      results.push(String(b.tool_use_id));
    }
    const missing = uses.filter((id) => !results.includes(id));
    if (missing.length > 0)
      return `messages.${i + 1}: \`tool_use\` ids were found without \`tool_result\` blocks immediately after: ${missing.join(', ')}. Each \`tool_use\` block must have a corresponding \`tool_result\` block in the next message.`;
    if (new Set(results).size !== results.length)
      return `messages.${i + 1}: each \`tool_use\` must have a single result. Found multiple \`tool_result\` blocks with id: ${results.find((id, n) => results.indexOf(id) !== n)}`;
  }
  return undefined;
}

function answer(req: Received, res: ServerResponse): void {
  const message = refusal(req.body);
  if (message !== undefined) {
    sendJson(res, 400, { type: 'error', error: { type: 'invalid_request_error', message } });
    return;
  }
  sendJson(res, 200, {
    id: 'msg_01FidelityFidelity',
    type: 'message',
    role: 'assistant',
    model: String(req.body.model),
    content: [{ type: 'text', text: 'ok' }],
    stop_reason: 'end_turn',
    stop_sequence: null,
    usage: { input_tokens: 12, output_tokens: 1 },
  });
}

let gw: TestGateway;
let received: Received[];

beforeAll(async () => {
  const mock = track(await startMock(answer));
  received = mock.received;
  gw = track(
    await startGateway({
      providers: [
        {
          name: 'anth',
          kind: 'anthropic',
          base_url: mock.url,
          api_key: 'sk-ant-fidelity',
          models: [{ name: 'claude-sonnet-4-5' }],
        },
      ],
      routes: { r: { strategy: 'priority', targets: ['anth/claude-sonnet-4-5'] } },
    }),
  );
});

/** Posts `body` to route r: the client's answer, and the request bodies Claude was sent for it. */
async function send(body: Json): Promise<{ res: Posted; sent: Json[] }> {
  const before = received.length;
  const res = await postChat(gw, { model: 'r', ...body });
  return { res, sent: received.slice(before).map((r) => r.body) };
}

const shellTool = {
  type: 'function',
  function: {
    name: 'shell',
    description: 'Run a shell command',
    parameters: { type: 'object', properties: { cmd: { type: 'string' } }, required: ['cmd'] },
  },
};

const call = (id: string, cmd: string): Json => ({
  id,
  type: 'function',
  function: { name: 'shell', arguments: JSON.stringify({ cmd }) },
});

const messagesOf = (body: Json | undefined): Json[] =>
  Array.isArray(body?.messages) ? body.messages.filter(isObj) : [];

describe('tool results as Claude takes them', () => {
  it('a tool whose output is only a line break ("\\n", a shell command that prints nothing) still gets its answer', async () => {
    // OpenAI takes any string as a tool message's content; Anthropic holds a tool_result's string content to the
    // text block rule (non-whitespace), so "\n" sent as it is wedges the conversation on a 400 at every turn.
    const { res, sent } = await send({
      tools: [shellTool],
      messages: [
        { role: 'user', content: 'Create the directory, then tell me when it is done.' },
        { role: 'assistant', content: null, tool_calls: [call('call_1', 'mkdir -p out')] },
        { role: 'tool', tool_call_id: 'call_1', content: '\n' },
      ],
    });
    expect(res.text).not.toContain('non-whitespace');
    expect(res.status).toBe(200);
    const results = blocksOf(messagesOf(sent.at(-1)).at(-1)?.content);
    expect(results.map((b) => b.tool_use_id)).toEqual(['call_1']);
  });

  it('two parallel calls that share one id (as Xinference mints them) each keep their own result', async () => {
    // An OpenAI-dialect server that gives every call of an answer the same id is answered by the client with one
    // tool message per call, in order. The gateway renames the second call for Anthropic (ids must be unique); its
    // result must follow it, and the first call keep the first result.
    const { res, sent } = await send({
      tools: [shellTool],
      messages: [
        { role: 'user', content: 'Count the files in a/ and in b/.' },
        {
          role: 'assistant',
          content: null,
          tool_calls: [call('call_6f3e', 'ls a | wc -l'), call('call_6f3e', 'ls b | wc -l')],
        },
        { role: 'tool', tool_call_id: 'call_6f3e', content: '3' },
        { role: 'tool', tool_call_id: 'call_6f3e', content: '5' },
      ],
    });
    expect(res.text).not.toContain('tool_use');
    expect(res.status).toBe(200);
    const msgs = messagesOf(sent.at(-1));
    const uses = blocksOf(msgs[1]?.content).filter((b) => b.type === 'tool_use');
    const results = blocksOf(msgs[2]?.content).filter((b) => b.type === 'tool_result');
    const resultOf = (id: unknown): unknown => results.find((r) => r.tool_use_id === id)?.content;
    expect(uses.map((u) => [(u.input as Json).cmd, resultOf(u.id)])).toEqual([
      ['ls a | wc -l', '3'],
      ['ls b | wc -l', '5'],
    ]);
  });

  it('a tool result holding text, a PDF and a plain-text file keeps all three inside its tool_result', async () => {
    // A fetch tool's answer: Anthropic's tool_result takes documents beside text, so nothing moves out of it.
    const { res, sent } = await send({
      tools: [shellTool],
      messages: [
        { role: 'user', content: 'Fetch the report and its notes.' },
        { role: 'assistant', content: null, tool_calls: [call('call_1', 'fetch report')] },
        {
          role: 'tool',
          tool_call_id: 'call_1',
          content: [
            { type: 'text', text: 'Fetched 2 files.' },
            {
              type: 'file',
              file: { filename: 'r.pdf', file_data: 'data:application/pdf;base64,JVBERi0xLjQK' },
            },
            { type: 'file', file: { filename: 'n.txt', file_data: 'data:text/plain;base64,bm90ZXM=' } },
          ],
        },
      ],
    });
    expect(res.status).toBe(200);
    const result = blocksOf(messagesOf(sent.at(-1)).at(-1)?.content)[0];
    expect(result?.type).toBe('tool_result');
    expect(blocksOf(result?.content)).toEqual([
      { type: 'text', text: 'Fetched 2 files.' },
      {
        type: 'document',
        source: { type: 'base64', media_type: 'application/pdf', data: 'JVBERi0xLjQK' },
        title: 'r.pdf',
      },
      { type: 'document', source: { type: 'text', media_type: 'text/plain', data: 'notes' }, title: 'n.txt' },
    ]);
  });
});

describe('tool definitions as Claude takes them', () => {
  it('a tool defined twice with the same definition (one MCP server loaded twice) reaches Claude once', async () => {
    // OpenAI answers a request that lists the same function twice; Anthropic refuses it ("tools: Tool names must
    // be unique."), so the request that works on one upstream of a route fails on the other.
    const { res, sent } = await send({
      tools: [shellTool, shellTool],
      messages: [{ role: 'user', content: 'List the files here.' }],
    });
    expect(res.text).not.toContain('must be unique');
    expect(res.status).toBe(200);
    expect(blocksOf(sent.at(-1)?.tools).map((t) => t.name)).toEqual(['shell']);
  });
});

describe('images and other parts as Claude takes them', () => {
  it('a PNG sent under an image/jpeg data URL (a label clients hard-code) reaches Claude as the PNG it is', async () => {
    // OpenAI reads the image whatever its data URL says; Anthropic checks the declared type against the bytes and
    // refuses a mismatch, so the same question fails only when the route picks Claude.
    const { res, sent } = await send({
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'What colour is this pixel?' },
            { type: 'image_url', image_url: { url: `data:image/jpeg;base64,${PNG_1PX}` } },
          ],
        },
      ],
    });
    expect(res.text).not.toContain('appears to be');
    expect(res.status).toBe(200);
    const image = blocksOf(messagesOf(sent.at(-1))[0]?.content).find((b) => b.type === 'image');
    expect(image?.source).toEqual({ type: 'base64', media_type: 'image/png', data: PNG_1PX });
  });

  it('an input_image part, which the gateway counts as an image, is never sent to Claude without its image', async () => {
    // README: a part Anthropic has no place for leaves Anthropic upstreams out, "never a request with that part
    // dropped". The gateway's routing reads `input_image` as an image (images capability, token estimate).
    const { sent } = await send({
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'What is in this picture?' },
            { type: 'input_image', image_url: 'https://example.com/cat.png' },
          ],
        },
      ],
    });
    const withoutImage = sent.filter(
      (body) => !messagesOf(body).some((m) => blocksOf(m.content).some((b) => b.type === 'image')),
    );
    expect(withoutImage).toEqual([]);
  });

  it('a video_url part (as vLLM takes one) is refused naming messages, not answered without the video', async () => {
    // Claude has no video block: on a route of Claude alone the answer is README's 400 naming the part.
    const { res, sent } = await send({
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'What happens in this clip?' },
            { type: 'video_url', video_url: { url: 'https://example.com/clip.mp4' } },
          ],
        },
      ],
    });
    expect(sent).toEqual([]);
    expect(res.status).toBe(400);
    expect((res.json.error as Json | undefined)?.param).toBe('messages');
  });
});
