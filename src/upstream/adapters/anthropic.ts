import type { ChatAdapter } from '../adapter.js';
import { buildAnthropicRequest } from './anthropic-request.js';
import { anthropicChatResponse, anthropicErrorInfo } from './anthropic-response.js';
import { AnthropicStreamTranslator } from './anthropic-stream.js';

/**
 * The Anthropic Messages dialect (`POST {base_url}/v1/messages`, base_url without `/v1`). Request mapping,
 * JSON/error translation and the SSE translator live in the three files beside this one.
 */
export const anthropicAdapter: ChatAdapter = {
  kind: 'anthropic',
  chatRequest: buildAnthropicRequest,
  chatResponse: anthropicChatResponse,
  streamTranslator: (sink, ctx) => new AnthropicStreamTranslator(sink, ctx),
  errorInfo: anthropicErrorInfo,
};
