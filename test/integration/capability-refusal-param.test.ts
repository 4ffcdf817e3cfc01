/**
 * The field named by the 400 a request gets when no upstream can take its tools (SPEC §2: candidates are
 * filtered by capability; §4 errors name their `param`): a legacy `functions` request is refused naming
 * `functions`, one with `tools` (also beside `functions`) naming `tools`, and nothing reaches the upstream.
 */
import { describe, expect, it } from 'vitest';
import { closeAfterEach } from '../helpers/cleanup.js';
import { simProvider, startGateway } from '../helpers/gateway.js';
import { post, simFactories, type Json } from '../helpers/sim-gateways.js';

const track = closeAfterEach();
const { sim } = simFactories(track);

const NO_TOOLS_CAPS = ['json', 'vision', 'stream'];

describe('the field a tools refusal names', () => {
  const FN = [{ name: 'lookup', parameters: { type: 'object', properties: {} } }];
  const TOOLS = [{ type: 'function', function: FN[0] }];

  it('functions only -> param functions; tools and functions -> tools; empty tools with functions -> functions', async () => {
    const a = await sim('a');
    const gw = track(
      await startGateway({
        providers: [simProvider('a', a.url, [{ name: 'm', capabilities: ['json', 'stream'] }])],
        routes: { main: { strategy: 'priority', targets: ['a/m'] } },
      }),
    );
    const msgs = [{ role: 'user', content: 'hi' }];
    const param = async (extra: Json) => {
      const r = await post(gw, { model: 'main', messages: msgs, ...extra });
      expect(r.status, r.text).toBe(400);
      return (r.json.error as Json).param;
    };
    expect(await param({ functions: FN })).toBe('functions');
    expect(await param({ tools: TOOLS, functions: FN })).toBe('tools');
    expect(await param({ tools: [], functions: FN })).toBe('functions');
    expect(await param({ tools: TOOLS })).toBe('tools');
    expect(a.requests).toHaveLength(0);
  });

  it('a legacy `functions` request no upstream can take for tools is refused naming `functions`, not a field it does not have', async () => {
    // A legacy `functions` list is a tool need like `tools` (routing/features.ts): the 400's `param` names
    // the field this request carries, `functions`, not `tools`, which it does not have.
    const p = await sim('p');
    const gw = track(
      await startGateway({
        providers: [simProvider('p', p.url, [{ name: 'm', capabilities: NO_TOOLS_CAPS }])],
        routes: { r: { strategy: 'priority', targets: ['p/m'] } },
      }),
    );
    const r = await post(gw, {
      model: 'r',
      messages: [{ role: 'user', content: 'call f' }],
      functions: [{ name: 'f', parameters: { type: 'object', properties: {} } }],
    });
    expect(r.status, r.text).toBe(400);
    expect(p.requests).toHaveLength(0);
    expect((r.json.error as Json).param).toBe('functions');
  });
});
