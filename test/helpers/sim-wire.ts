import { request } from 'undici';

/** Wire helpers for the simulator's own tests: raw requests and a literal SSE split. */
export interface SseEvent {
  event: string | undefined;
  data: string;
}

/** Splits an SSE body exactly as framed (`event:`/`data:` lines, blank-line separated). */
export function sseEvents(text: string): SseEvent[] {
  return text
    .split('\n\n')
    .filter((block) => block !== '')
    .map((block) => {
      let event: string | undefined;
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event: ')) event = line.slice(7);
        else if (line.startsWith('data: ')) data.push(line.slice(6));
      }
      return { event, data: data.join('\n') };
    });
}

export interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  /** Set when the body was cut (socket closed mid-response). */
  error: Error | undefined;
}

export async function post(
  url: string,
  body: unknown,
  headers: Record<string, string> = {},
  signal?: AbortSignal,
): Promise<RawResponse> {
  const res = await request(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    signal,
  });
  let text = '';
  let error: Error | undefined;
  try {
    for await (const chunk of res.body) text += (chunk as Buffer).toString('utf8');
  } catch (err) {
    error = err as Error;
  }
  return { status: res.statusCode, headers: res.headers, text, error };
}

export async function get(url: string, headers: Record<string, string> = {}): Promise<RawResponse> {
  const res = await request(url, { headers });
  return { status: res.statusCode, headers: res.headers, text: await res.body.text(), error: undefined };
}
