import {
  contentWeight,
  type ChunkSink,
  type StreamContext,
  type StreamTranslator,
  type Usage,
} from '../adapter.js';
import { LocalStops } from './local-stops.js';
import { JsonAnswer } from './json-answer.js';
import {
  asString,
  createChunkEncoder,
  isObject,
  parseJsonObject,
  type ChunkEncoder,
  type FinishReason,
  type JsonObject,
} from './common.js';
import {
  completionIdFor,
  inBandError,
  mapStopReason,
  readTokens,
  toOpenAiUsage,
  type AnthropicTokens,
} from './anthropic-response.js';

interface ToolBlock {
  /** Its Anthropic content-block index. */
  readonly block: number;
  /** Its OpenAI tool_calls index. */
  readonly index: number;
  argumentsSent: boolean;
  /** The start block's `input`: `{}` from Anthropic, the whole input from some compatible servers. */
  readonly input: unknown;
}

interface ThinkingBlock {
  readonly block: number;
  text: string;
  signature: string;
}

/**
 * The most thinking (text, signatures, redacted data) held to hand back as blocks; past it none is offered
 * (the text has gone out as reasoning_content all the same), since Claude refuses a turn sent back with some of
 * its thinking left out. Anthropic's largest budgets are ~128k tokens, ~0.5 Mi chars.
 */
const MAX_THINKING_CHARS = 2 * 1024 * 1024;
/** What each held block counts against MAX_THINKING_CHARS besides its text: empty blocks are not free. */
const BLOCK_CHARS = 64;

/**
 * Anthropic Messages SSE events -> OpenAI `chat.completion.chunk`s, one chunk out per meaningful event in,
 * as they arrive. The role chunk (message_start) and the finish chunk are not content; text, a tool call's
 * start, its argument fragments and thinking (as `reasoning_content` deltas, then every whole block, signed or
 * redacted, as `thinking_blocks` in one chunk before the finish) are (the stream commits there). One chunk,
 * not one per block: the openai SDK's stream helper keeps only the last value of a field it does not know,
 * and Claude refuses an assistant turn sent back with some of its thinking missing. Empty deltas, pings and
 * text block stops produce nothing; data that is not a JSON object is dropped. Anthropic may send several
 * message_delta events; only the first with a stop_reason gives the finish chunk (OpenAI sends one).
 */
export class AnthropicStreamTranslator implements StreamTranslator {
  private encoder: ChunkEncoder | undefined;
  /**
   * The tool block open now. Anthropic's content blocks never overlap (each stops before the next starts),
   * so one is held, not every block the stream had: a map of them, each holding its start's input, grew for
   * as long as an upstream kept starting blocks it never stopped.
   */
  private tool: ToolBlock | undefined;
  /** The thinking block open now: its text and signature, kept whole when it stops. */
  private thinking: ThinkingBlock | undefined;
  /** The answer's whole thinking blocks, offered at its end; undefined once past MAX_THINKING_CHARS. */
  private thinkingBlocks: JsonObject[] | undefined = [];
  /** Characters held in `thinking` and `thinkingBlocks`. */
  private thinkingChars = 0;
  /** Tool calls started so far: the next one's OpenAI index. */
  private toolCalls = 0;
  private readonly tokens: AnthropicTokens = { input: 0, cacheCreation: 0, cacheRead: 0, output: 0 };
  private usageReported = false;
  private finishSent = false;
  /** A message_delta said why the answer stopped (a finish made up at message_stop is not one). */
  private stopReasonSeen = false;
  private done = false;
  /** Asked for JSON: the object alone is relayed, without Claude's fence or preface (json-answer.ts). */
  private readonly json: JsonAnswer | undefined;
  /** Stop sequences of whitespace alone, which Anthropic refuses: the answer is cut at them here. */
  private readonly stops: LocalStops | undefined;
  /** Tokens of content relayed so far, estimated (contentWeight). */
  private relayed = 0;

  constructor(
    private readonly sink: ChunkSink,
    private readonly ctx: StreamContext,
  ) {
    this.json = ctx.json === true ? new JsonAnswer() : undefined;
    const stops = ctx.localStops;
    this.stops = stops !== undefined && stops.length > 0 ? new LocalStops(stops) : undefined;
  }

  /**
   * The upstream closed without `message_stop`. After a `message_delta` with its stop reason the answer is
   * whole (as an OpenAI stream closed after its finish_reason without `[DONE]`); before it, a cut stream.
   */
  close(): void {
    if (!this.done && this.finishSent) this.onMessageStop();
  }

  /** No stop reason: a message_start and message_stop with nothing between is no answer (failed over). */
  saidNoFinish(): boolean {
    return !this.stopReasonSeen;
  }

  event(type: string | undefined, data: string): void {
    if (this.done) return;
    const msg = parseJsonObject(data);
    if (msg === undefined) {
      // An error event is a failure whatever its payload; its unparsable text is never relayed.
      if (type === 'error') this.fail(undefined);
      return;
    }
    // The payload's own type is authoritative; the `event:` name is a fallback for proxies that keep only one.
    const kind = typeof msg.type === 'string' ? msg.type : type;
    // After the finish chunk only usage and the end may follow: content there would come after finish_reason.
    if (this.finishSent && kind !== 'message_delta' && kind !== 'message_stop' && kind !== 'error') return;
    switch (kind) {
      case 'message_start':
        this.onMessageStart(msg.message);
        return;
      case 'content_block_start':
        this.onBlockStart(msg.index, msg.content_block);
        return;
      case 'content_block_delta':
        this.onBlockDelta(msg.index, msg.delta);
        return;
      case 'content_block_stop':
        this.onBlockStop(msg.index);
        return;
      case 'message_delta':
        this.onMessageDelta(msg);
        return;
      case 'message_stop':
        this.onMessageStop();
        return;
      case 'error': {
        // Anthropic nests it under `error`; some compatible servers put message and code at the top.
        this.fail(isObject(msg.error) ? msg.error : msg);
        return;
      }
      default:
        // ping and event types newer than this code.
        return;
    }
  }

  private enc(messageId?: unknown): ChunkEncoder {
    this.encoder ??= createChunkEncoder(
      completionIdFor(messageId),
      this.ctx.created,
      this.ctx.model,
      this.ctx.includeUsage,
    );
    return this.encoder;
  }

  usageSoFar(): Usage | undefined {
    // message_start's output_tokens is not the answer's: the completion is counted from what was relayed.
    return toOpenAiUsage(this.usageReported ? this.tokens : { ...this.tokens, outputSeen: false });
  }

  private onMessageStart(message: unknown): void {
    const m: JsonObject = isObject(message) ? message : {};
    readTokens(m.usage, this.tokens);
    this.emit(this.enc(m.id).choice({ role: 'assistant', content: '' }, null), 0);
  }

  private onBlockStart(index: unknown, block: unknown): void {
    this.closeTool(); // a block left open ends where the next one starts
    if (!isObject(block)) return;
    if (block.type === 'thinking' && typeof index === 'number') {
      if (this.holdThinking(BLOCK_CHARS)) this.thinking = { block: index, text: '', signature: '' };
      return;
    }
    if (block.type === 'redacted_thinking' && typeof block.data === 'string') {
      if (this.holdThinking(BLOCK_CHARS + block.data.length))
        this.thinkingBlocks?.push({ type: 'redacted_thinking', data: block.data });
      return;
    }
    if (block.type === 'text') {
      // Anthropic opens text blocks empty; relay text only if one ever arrives here.
      if (typeof block.text === 'string' && block.text !== '') this.text(block.text);
      return;
    }
    if (block.type !== 'tool_use' || typeof index !== 'number') return;
    // Text Claude wrote before a tool call is its lead-in, not the JSON answer: it goes before the call.
    this.flushText();
    if (this.finishSent) return; // a stop in the text held back ended the answer before this call
    const k = this.toolCalls++;
    this.tool = { block: index, index: k, argumentsSent: false, input: block.input };
    const call = {
      index: k,
      id: asString(block.id) ?? '',
      type: 'function',
      function: { name: asString(block.name) ?? '', arguments: '' },
    };
    this.emit(this.enc().choice({ tool_calls: [call] }, null), contentWeight(call.function.name));
  }

  private onBlockDelta(index: unknown, delta: unknown): void {
    if (!isObject(delta)) return;
    if (delta.type === 'text_delta') {
      if (typeof delta.text === 'string' && delta.text !== '') this.text(delta.text);
      return;
    }
    if (delta.type === 'thinking_delta') {
      // Reasoning is content, as an OpenAI-compatible server's reasoning_content is: the stream commits here.
      const text = delta.thinking;
      if (typeof text !== 'string' || text === '') return;
      const held = this.thinking;
      if (held !== undefined && held.block === index && this.holdThinking(text.length)) held.text += text;
      this.emit(this.enc().choice({ reasoning_content: text }, null), contentWeight(text));
      return;
    }
    if (delta.type === 'signature_delta') {
      const held = this.thinking;
      if (
        held !== undefined &&
        held.block === index &&
        typeof delta.signature === 'string' &&
        this.holdThinking(delta.signature.length)
      )
        held.signature += delta.signature;
      return;
    }
    if (delta.type !== 'input_json_delta' || typeof index !== 'number') return;
    const tool = this.tool;
    const part = delta.partial_json;
    // Fragments of server-tool blocks (not held) and empty fragments carry nothing for the client.
    if (tool?.block !== index || typeof part !== 'string' || part === '') return;
    tool.argumentsSent = true;
    this.arguments(tool.index, part);
  }

  private onBlockStop(index: unknown): void {
    if (this.tool?.block === index) this.closeTool();
    const held = this.thinking;
    if (held !== undefined && held.block === index) {
      this.thinking = undefined;
      // Signed, the block can go back to Claude with the assistant message (as JSON answers offer it).
      if (held.signature !== '')
        this.thinkingBlocks?.push({ type: 'thinking', thinking: held.text, signature: held.signature });
    }
  }

  /** Counts `chars` more of thinking held; past the bound, nothing more is held or offered. */
  private holdThinking(chars: number): boolean {
    this.thinkingChars += chars;
    if (this.thinkingChars <= MAX_THINKING_CHARS) return true;
    this.thinking = undefined;
    this.thinkingBlocks = undefined;
    return false;
  }

  /** The whole thinking blocks for the client to send back, as `thinking_blocks` (a field of ours, not OpenAI's). */
  private offerThinking(): void {
    const blocks = this.thinkingBlocks;
    this.thinkingBlocks = undefined;
    if (blocks !== undefined && blocks.length > 0)
      this.emit(this.enc().choice({ thinking_blocks: blocks }, null), contentWeight(''));
  }

  /**
   * Ends the open tool call. One that got no argument fragments (a tool without parameters streams
   * `partial_json: ""`) gets its start block's input, `{}` at least: OpenAI never ends a call with empty
   * `arguments`, and clients JSON.parse them.
   */
  private closeTool(): void {
    const tool = this.tool;
    if (tool === undefined) return;
    this.tool = undefined;
    if (!tool.argumentsSent)
      this.arguments(tool.index, JSON.stringify(isObject(tool.input) ? tool.input : {}));
  }

  private arguments(k: number, part: string): void {
    this.emit(
      this.enc().choice({ tool_calls: [{ index: k, function: { arguments: part } }] }, null),
      contentWeight(part),
    );
  }

  private text(content: string): void {
    this.answerText(this.json === undefined ? content : this.json.feed(content));
  }

  /**
   * The answer's text on its way to the client, through the stops Claude was not given: at one the answer
   * ends, as OpenAI's does (stopHere).
   */
  private answerText(text: string): void {
    const stops = this.stops;
    if (stops === undefined) {
      this.relayText(text);
      return;
    }
    this.relayText(stops.feed(text));
    if (stops.stopped && !this.finishSent) this.stopHere();
  }

  /** Text held back goes on before a tool call: a JSON answer's that never came, a stop's possible start. */
  private flushText(): void {
    if (this.json !== undefined) this.answerText(this.json.end());
    if (!this.finishSent) this.relayText(this.stops?.release() ?? '');
  }

  /**
   * A stop Claude was not given ended the answer: the finish (`tool_calls` when calls came before it), then
   * the usage and the end, at once. What Claude writes past it is not waited for (its request is let go, as
   * a client that stops reading lets it go); its output count is not known yet, so the relayed answer's
   * estimate stands for it, marked unreported.
   */
  private stopHere(): void {
    this.closeTool();
    this.stopReasonSeen = true;
    this.offerThinking();
    this.finishSent = true;
    this.finish(this.toolCalls > 0 ? 'tool_calls' : 'stop');
    this.done = true;
    const output = Math.max(1, Math.round(this.relayed));
    const usage = toOpenAiUsage({ ...this.tokens, output, outputSeen: false });
    if (usage) this.sink.usage(usage);
    if (this.ctx.includeUsage && usage) this.emit(this.enc().usage(usage), 0);
    this.sink.end(true);
  }

  /**
   * The finish chunk, with the text held back for a JSON answer that never came in it (and a stop's possible
   * start): an SDK that parses each content delta as partial JSON (the openai SDK's stream helper) then reads
   * the finish first — a refusal is its content_filter error, not a SyntaxError on the refusal's words.
   */
  private finish(reason: FinishReason): void {
    const fromJson = this.json?.end() ?? '';
    const stops = this.stops;
    const held = stops === undefined ? fromJson : stops.feed(fromJson) + stops.release();
    const delta = held === '' ? {} : { content: held };
    this.emit(this.enc().choice(delta, reason), held === '' ? 0 : contentWeight(held));
  }

  /** One chunk to the sink; `weight`: the tokens of content it carries, counted as relayed. */
  private emit(json: string, weight: number): void {
    this.relayed += weight;
    this.sink.chunk(json, weight);
  }

  private relayText(content: string): void {
    if (content !== '') this.emit(this.enc().choice({ content }, null), contentWeight(content));
  }

  private onMessageDelta(msg: JsonObject): void {
    const delta = isObject(msg.delta) ? msg.delta : {};
    readTokens(msg.usage, this.tokens);
    if (!this.finishSent && typeof delta.stop_reason === 'string') {
      this.stopReasonSeen = true;
      // A tool block the upstream never stopped: its arguments go before the finish, not after it.
      this.closeTool();
      this.offerThinking();
      this.finishSent = true;
      this.finish(mapStopReason(delta.stop_reason));
    }
    this.usageReported = true;
    const usage = toOpenAiUsage(this.tokens);
    if (usage) this.sink.usage(usage);
  }

  private onMessageStop(): void {
    this.closeTool();
    this.done = true;
    const usage = toOpenAiUsage(this.tokens);
    // A stream that never said why it stopped still ends with a finish_reason, as OpenAI's always do.
    if (!this.finishSent) {
      this.offerThinking();
      this.finish('stop');
    }
    if (usage && !this.usageReported) this.sink.usage(usage);
    // No count at all from the upstream: no usage chunk, rather than one of zeros (as a relayed stream would).
    if (this.ctx.includeUsage && usage) this.emit(this.enc().usage(usage), 0);
    this.sink.end();
  }

  private fail(error: unknown): void {
    this.done = true;
    this.sink.error(inBandError(error, 'upstream stream error'));
  }
}
