import { describe, expect, it } from 'vitest';
import {
  rememberSource,
  sourceWithEdits,
  sourceWithModel,
  topLevelMembers,
  topLevelStringSpan,
} from '../../../src/upstream/body-text.js';
import { stringifyWithModel } from '../../../src/upstream/adapters/openai.js';

function parsed(text: string): Record<string, unknown> & { model: string } {
  const body = JSON.parse(text) as Record<string, unknown> & { model: string };
  rememberSource(body, text);
  return body;
}

/** What the splice must mean: the parsed body with the new model. */
function expectSameMeaning(text: string, model: string): string {
  const body = parsed(text);
  const out = sourceWithModel(body, model);
  expect(out, text).toBeDefined();
  expect(JSON.parse(out!)).toEqual({ ...(JSON.parse(text) as object), model });
  return out!;
}

describe('sourceWithModel', () => {
  it('keeps every byte of the client text but the model value', () => {
    const text =
      '{\n  "messages": [ { "role": "user", "content": "héllo \\"q\\" \\\\" } ],\n  "model" : "alias",\n  "temperature": 1.0, "big": 1e400\n}';
    const out = expectSameMeaning(text, 'gpt-4o-mini');
    expect(out).toBe(text.replace('"alias"', '"gpt-4o-mini"'));
    // What JSON.stringify would have changed: 1.0 -> 1, 1e400 -> null, the layout.
    expect(out).toContain('"temperature": 1.0, "big": 1e400');
  });

  it('touches only the top-level key: model keys and look-alike text inside values stay', () => {
    const text =
      '{"messages":[{"role":"user","content":"\\"model\\":\\"alias\\""},{"role":"tool","model":"alias"}],' +
      '"metadata":{"model":"alias"},"note":"model","model":"alias","tail":["model","alias"]}';
    const out = expectSameMeaning(text, 'up');
    expect(out.match(/alias/g)).toHaveLength(4);
  });

  it('declines when any top-level key repeats: the upstream must get the one value that was validated', () => {
    // JSON.parse keeps the last `max_tokens` (10, validated); a parser keeping the first would read -5.
    for (const text of [
      '{"max_tokens":-5,"model":"a","messages":[],"max_tokens":10}',
      '{"messages":"no","model":"a","messages":[]}',
      '{"model":"a","messages":[],"__proto__":1,"__proto__":2}',
    ]) {
      expect(sourceWithModel(parsed(text), 'up'), text).toBeUndefined();
    }
    // The same keys nested are not top-level repeats.
    expectSameMeaning(
      '{"model":"a","messages":[{"role":"user","content":"x"},{"role":"user","content":"y"}]}',
      'up',
    );
    expectSameMeaning('{"model":"a","__proto__":{"x":1},"messages":[]}', 'up');
  });

  it('escapes the new model name as JSON', () => {
    const out = expectSameMeaning('{"model":"a","messages":[]}', 'we"ird\\name\u2028');
    expect((JSON.parse(out) as { model: string }).model).toBe('we"ird\\name\u2028');
  });

  it('declines (so the caller serialises) whenever the splice could mean something else', () => {
    const cases = [
      '{"model":"a","messages":[],"model":"a"}', // repeated: parsers disagree on which wins
      '{"mod\\u0065l":"a","messages":[]}', // an escaped key is `model` too
      '{"model":"a","x\\"y":1}', // any escaped top-level key: we do not decode keys
      '{"model":"\\u0061","messages":[]}', // the value is spelt with escapes
      '{"messages":[]}', // no model at all
    ];
    for (const text of cases) {
      const body = parsed(text);
      body.model ??= 'a';
      expect(sourceWithModel(body, 'up'), text).toBeUndefined();
    }
  });

  it('declines a body it did not see parsed, or whose model changed since', () => {
    expect(sourceWithModel({ model: 'a' }, 'up')).toBeUndefined();
    const body = parsed('{"model":"a","messages":[]}');
    body.model = 'b';
    expect(sourceWithModel(body, 'up')).toBeUndefined();
  });

  it('hides the text from keys and serialisation, and a copy of the body does not use it', () => {
    const body = parsed('{"model":"a","n":1}');
    expect(Object.keys(body)).toEqual(['model', 'n']);
    expect(sourceWithModel({ ...body }, 'up')).toBeUndefined();
    expect(JSON.stringify(body)).toBe('{"model":"a","n":1}');
    const array = [1];
    rememberSource(array, '[1]'); // only an object body has a model; arrays and scalars are left alone
    expect(Object.getOwnPropertySymbols(array)).toEqual([]);
    expect(() => rememberSource(null, 'null')).not.toThrow();
  });

  it('matches a re-serialisation on generated bodies', () => {
    let seed = 7;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const alphabet = ['a', '"', '\\', '{', '}', '[', ']', ',', ':', ' ', 'é', '\n', 'model', '"model"'];
    const str = (): string => Array.from({ length: rnd(12) }, () => alphabet[rnd(alphabet.length)]).join('');
    const value = (depth: number): unknown => {
      switch (depth > 2 ? rnd(3) : rnd(6)) {
        case 0:
          return str();
        case 1:
          return rnd(1000) / 10;
        case 2:
          return rnd(2) === 0 ? null : true;
        case 3:
          return Array.from({ length: rnd(4) }, () => value(depth + 1));
        default:
          return Object.fromEntries(Array.from({ length: rnd(4) }, () => [str(), value(depth + 1)]));
      }
    };
    let spliced = 0;
    for (let n = 0; n < 400; n++) {
      const entries: [string, unknown][] = Array.from({ length: rnd(5) }, () => [
        `k${rnd(9)}${str()}`,
        value(0),
      ]);
      entries.splice(rnd(entries.length + 1), 0, ['model', str()]);
      const text = JSON.stringify(Object.fromEntries(entries), null, rnd(2) === 0 ? undefined : rnd(4));
      const escapedKey = entries.some(([k]) => JSON.stringify(k).length !== k.length + 2);
      if (escapedKey) expect(sourceWithModel(parsed(text), 'up'), text).toBeUndefined();
      else {
        expectSameMeaning(text, `up-${n}`);
        spliced++;
      }
    }
    expect(spliced).toBeGreaterThan(100);
  });
});

describe('sourceWithEdits', () => {
  it('keeps the client text of every member a fit left alone and rewrites only the ones it changed', () => {
    const text =
      '{ "model" : "alias", "messages": [ {"role":"user","content":"a \\"q\\""} ], "max_tokens": 50,\n' +
      '  "temperature": 0.5, "seed": 9223372036854775807, "top_p": 1.0, "x": {"n": 12345678901234567890} }';
    const body = parsed(text);
    const { max_tokens, temperature: _dropped, ...rest } = body;
    const fitted = { ...rest, max_completion_tokens: max_tokens, reasoning_effort: 'minimal' };
    const out = sourceWithEdits(fitted, 'gpt-5');
    expect(out).toBe(
      '{"model":"gpt-5","messages": [ {"role":"user","content":"a \\"q\\""} ],"seed": 9223372036854775807,' +
        '"top_p": 1.0,"x": {"n": 12345678901234567890},"max_completion_tokens":50,"reasoning_effort":"minimal"}',
    );
    // A value changed in place of the same key is written where the key was.
    expect(sourceWithEdits({ ...body, max_tokens: 8 }, 'up')).toContain('"messages": [');
    expect(sourceWithEdits({ ...body, max_tokens: 8 }, 'up')).toContain(
      ',"max_tokens":8,"temperature": 0.5,',
    );
  });

  it('serialises a changed nested value whole, and skips a member set to undefined as JSON.stringify does', () => {
    const body = parsed(
      '{"model":"a","messages":[{"role":"user","content":"x","thinking_blocks":[]}],"n":1}',
    );
    const copy = { ...body, messages: [{ role: 'user', content: 'x' }], n: undefined };
    expect(sourceWithEdits(copy, 'up')).toBe('{"model":"up","messages":[{"role":"user","content":"x"}]}');
  });

  it('adds the model when the client text had none, and declines what it cannot read exactly', () => {
    const body = parsed('{"messages":[]}');
    expect(sourceWithEdits({ ...body, model: 'a' }, 'up')).toBe('{"messages":[],"model":"up"}');
    for (const text of [
      '{"model":"a","max_tokens":-5,"max_tokens":10}', // repeated: parsers disagree on which wins
      '{"model":"a","x\\"y":1}', // an escaped key: we do not decode keys
    ]) {
      expect(sourceWithEdits({ ...parsed(text) }, 'up'), text).toBeUndefined();
    }
    expect(sourceWithEdits({ model: 'a' }, 'up')).toBeUndefined(); // never parsed from text
  });

  it('means what a serialisation of the edited copy means, on generated bodies and edits', () => {
    let seed = 11;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const alphabet = ['a', '"', '\\', '{', '}', '[', ']', ',', ':', ' ', 'é', '\n', '-1e5', 'true'];
    const str = (): string => Array.from({ length: rnd(10) }, () => alphabet[rnd(alphabet.length)]).join('');
    const value = (depth: number): unknown => {
      switch (depth > 2 ? rnd(4) : rnd(6)) {
        case 0:
          return str();
        case 1:
          return (rnd(2000) - 1000) / 7;
        case 2:
          return [null, true, false][rnd(3)];
        case 3:
          return -rnd(10);
        case 4:
          return Array.from({ length: rnd(4) }, () => value(depth + 1));
        default:
          return Object.fromEntries(Array.from({ length: rnd(4) }, () => [str(), value(depth + 1)]));
      }
    };
    let read = 0;
    for (let n = 0; n < 400; n++) {
      const entries: [string, unknown][] = Array.from({ length: rnd(6) }, () => [
        `k${rnd(9)}${str()}`,
        value(0),
      ]);
      entries.splice(rnd(entries.length + 1), 0, ['model', str()]);
      const text = JSON.stringify(Object.fromEntries(entries), null, rnd(2) === 0 ? undefined : rnd(4));
      const body = parsed(text);
      const copy: Record<string, unknown> = { ...body };
      for (const key of Object.keys(body)) {
        const edit = rnd(4);
        if (edit === 0) delete copy[key];
        else if (edit === 1) copy[key] = value(1);
      }
      if (rnd(2) === 0) copy[`added${str()}`] = value(0);
      const out = sourceWithEdits(copy, `up-${n}`);
      const escapedKey = entries.some(([k]) => JSON.stringify(k).length !== k.length + 2);
      if (escapedKey) expect(out, text).toBeUndefined();
      else {
        expect(JSON.parse(out!), text).toEqual(JSON.parse(JSON.stringify({ ...copy, model: `up-${n}` })));
        read++;
      }
    }
    expect(read).toBeGreaterThan(100);
  });
});

describe('topLevelMembers', () => {
  it('lists each member with its text span, and refuses what is not one plain object', () => {
    const text = ' { "a" : [1, {"b": "}"}] , "c":-1.5e3,"d":null } ';
    expect(topLevelMembers(text)?.map((m) => [m.key, text.slice(m.start, m.end)])).toEqual([
      ['a', '"a" : [1, {"b": "}"}]'],
      ['c', '"c":-1.5e3'],
      ['d', '"d":null'],
    ]);
    expect(topLevelMembers('{}')).toEqual([]);
    for (const bad of ['[1]', '"s"', '{"a":1,"a":2}', '{"\\u0061":1}', '{"a":1', '{"a":"x}'])
      expect(topLevelMembers(bad), bad).toBeUndefined();
  });
});

describe('topLevelStringSpan', () => {
  it('is undefined for a non-string value', () => {
    expect(topLevelStringSpan('{"model":1}', 'model')).toBeUndefined();
    expect(topLevelStringSpan('{"model":{"a":"b"}}', 'model')).toBeUndefined();
  });

  it('is undefined when a key is written with an escape, wherever it sits', () => {
    expect(topLevelStringSpan('{"a":"x\\y","mod\\u0065l":"m"}', 'model')).toBeUndefined();
    expect(topLevelStringSpan('{"a\\n":"x","model":"m"}', 'model')).toBeUndefined();
    expect(topLevelStringSpan('{"a":"x\\y","model":"m"}', 'model')).toEqual([19, 22, 2]);
  });
});

// Each key looked for a `\` from its own start to the end of the text: keys x text length, seconds of one
// core for a 10 MB body of many keys. At these sizes that was minutes; read once, it is milliseconds (the
// test's own timeout is the bound: no timing here).
describe('many keys ahead of a long value', () => {
  const keys = 300_000;
  let head = '{';
  for (let i = 0; i < keys; i++) head += `"k${i}":0,`;
  const text = `${head}"model":"alias","messages":[{"role":"user","content":"${'x'.repeat(6_000_000)}"}]}`;

  it('topLevelStringSpan and topLevelMembers read the text once', () => {
    const span = topLevelStringSpan(text, 'model');
    expect(text.slice(span![0], span![1])).toBe('"alias"');
    expect(span![2]).toBe(keys + 2);
    expect(topLevelMembers(text)).toHaveLength(keys + 2);
  }, 30_000);
});

describe('stringifyWithModel', () => {
  it('splices the client text when it can, and serialises otherwise', () => {
    const text = '{ "model": "alias", "messages": [] }';
    expect(stringifyWithModel(parsed(text), 'up')).toBe('{ "model": "up", "messages": [] }');
    const unparsed = { model: 'alias', messages: [] as unknown[] };
    expect(stringifyWithModel(unparsed, 'up')).toBe('{"model":"up","messages":[]}');
    expect(unparsed.model).toBe('alias');
    // A fitted copy: the client text of what the fit left alone.
    const { temperature: _dropped, ...fitted } = parsed('{"model":"alias","temperature":1.0,"seed":1.0}');
    expect(stringifyWithModel(fitted as typeof unparsed, 'up')).toBe('{"model":"up","seed":1.0}');
  });
});
