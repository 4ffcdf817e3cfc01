import { describe, expect, it } from 'vitest';
import { chatFeatures } from '../../../src/routing/features.js';
import { IMAGE_TOKENS_HIGH, estimatePromptTokens, isImagePart } from '../../../src/routing/tokens.js';

const withPart = (part: unknown) => ({ model: 'm', messages: [{ role: 'user', content: [part] }] });

describe('chatFeatures images', () => {
  it.each(['image_url', 'image', 'input_image'])('flags a %s part, as token counting does', (type) => {
    const body = withPart({ type, image_url: { url: 'https://example.com/a.png' } });
    expect(isImagePart({ type })).toBe(true);
    expect(chatFeatures(body).images).toBe(true);
    const textOnly = estimatePromptTokens({ messages: [{ role: 'user', content: [] }] });
    expect(estimatePromptTokens(body) - textOnly).toBe(IMAGE_TOKENS_HIGH);
  });

  it('does not flag text parts or malformed parts', () => {
    expect(chatFeatures(withPart({ type: 'text', text: 'hi' })).images).toBe(false);
    expect(chatFeatures(withPart(null)).images).toBe(false);
    expect(chatFeatures({ model: 'm', messages: [{ role: 'user', content: 'image_url' }] }).images).toBe(
      false,
    );
    expect(isImagePart('image_url')).toBe(false);
  });
});

describe('chatFeatures tools', () => {
  const msgs = [{ role: 'user', content: 'hi' }];
  it('tools offered: a non-empty `tools` or legacy `functions` list; an empty one is none', () => {
    const fn = { name: 'f', parameters: { type: 'object' } };
    expect(
      chatFeatures({ model: 'm', messages: msgs, tools: [{ type: 'function', function: fn }] }).tools,
    ).toBe(true);
    expect(chatFeatures({ model: 'm', messages: msgs, functions: [fn] }).tools).toBe(true);
    expect(chatFeatures({ model: 'm', messages: msgs, tools: [] }).tools).toBe(false);
    expect(chatFeatures({ model: 'm', messages: msgs, functions: [] }).tools).toBe(false);
  });

  it('a refusal for tools names the field they came in: `functions` only when no `tools` list is given', () => {
    const fn = { name: 'f', parameters: { type: 'object' } };
    const tool = { type: 'function', function: fn };
    expect(chatFeatures({ model: 'm', messages: msgs, functions: [fn] }).toolsParam).toBe('functions');
    expect(chatFeatures({ model: 'm', messages: msgs, tools: [tool] }).toolsParam).toBe('tools');
    expect(chatFeatures({ model: 'm', messages: msgs, tools: [tool], functions: [fn] }).toolsParam).toBe(
      'tools',
    );
    expect(chatFeatures({ model: 'm', messages: msgs }).toolsParam).toBe('tools');
  });
});
