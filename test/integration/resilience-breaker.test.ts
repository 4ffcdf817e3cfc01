import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { harness } from '../helpers/resilience-harness.js';

const h = harness();

describe('circuit breaker over real HTTP (failure_threshold 2, 1 probe, 2 successes)', () => {
  it('opens after the threshold, skips while open, admits exactly one probe when half-open, closes after two successes', async () => {
    const a = await h.sim('a', { status: 500 });
    const b = await h.sim('b');
    const openMs = 800; // room for the requests that must find it open, on a busy machine
    await h.gateway([a, b], { breaker: { open_ms: openMs } });

    // closed: both failures reach a, and each request is served by b.
    expect((await h.breaker('a/m')).state).toBe('closed');
    const first = await h.chat();
    expect(first.headers['x-router-provider']).toBe('b');
    let br = await h.breaker('a/m');
    expect(br.state).toBe('closed');
    expect(br.consecutive_failures).toBe(1);
    await h.chat();
    expect(a.requests).toHaveLength(2);

    // open: a gets nothing; requests go straight to b in one attempt.
    br = await h.breaker('a/m');
    expect(br.state).toBe('open');
    expect(br.trip_cause).toBe('errors');
    expect(await h.metric('llm_router_circuit_state{provider="a",model="m"}')).toBe(2);
    expect(br.ms_until_half_open).toBeGreaterThan(0);
    expect(br.ms_until_half_open).toBeLessThanOrEqual(openMs);
    for (let i = 0; i < 3; i++) {
      const r = await h.chat();
      expect(r.status).toBe(200);
      expect(r.headers['x-router-provider']).toBe('b');
      expect(r.headers['x-router-attempts']).toBe('1');
    }
    expect(a.requests).toHaveLength(2);

    // half_open once open_ms has passed (sleeping past open_ms is the clock, not a wait for an event).
    // a answers slowly enough that the whole burst is in while the probe still holds its permit, even on
    // a loaded machine (at 200 ms a late burst request could take the next permit).
    a.set({ status: undefined, latencyMs: 1000 });
    await sleep((await h.breaker('a/m')).ms_until_half_open + 20);
    br = await h.breaker('a/m');
    expect(br.state).toBe('half_open');
    expect(br.ms_until_half_open).toBe(0);

    // Five concurrent requests while a is slow: exactly one probe reaches it, the rest go to b.
    const bBefore = b.requests.length;
    const burst = Array.from({ length: 5 }, () => h.chat());
    await a.waitForRequests(3);
    await b.waitForRequests(bBefore + 4);
    const during = await h.breaker('a/m');
    expect(during.state).toBe('half_open');
    expect(during.probes_in_flight).toBe(1);
    const replies = await Promise.all(burst);
    expect(replies.every((r) => r.status === 200)).toBe(true);
    expect(replies.filter((r) => r.headers['x-router-provider'] === 'a')).toHaveLength(1);
    expect(a.requests).toHaveLength(3);

    // One success is not enough (success_threshold 2).
    br = await h.breaker('a/m');
    expect(br.state).toBe('half_open');
    expect(br.consecutive_successes).toBe(1);
    expect(br.probes_in_flight).toBe(0);

    // The second probe closes it; traffic returns to a (priority #1).
    const second = await h.chat();
    expect(second.headers['x-router-provider']).toBe('a');
    br = await h.breaker('a/m');
    expect(br.state).toBe('closed');
    expect(br.consecutive_failures).toBe(0);
    expect(br.trip_cause).toBeNull();
    expect(await h.metric('llm_router_circuit_state{provider="a",model="m"}')).toBe(0);
    for (const to of ['open', 'half_open', 'closed']) {
      expect(
        await h.metric(`llm_router_circuit_transitions_total{provider="a",model="m",to="${to}"}`),
        to,
      ).toBe(1);
    }
    a.set({ latencyMs: 0 });
    const after = await Promise.all(Array.from({ length: 3 }, () => h.chat()));
    expect(after.map((r) => r.headers['x-router-provider'])).toEqual(['a', 'a', 'a']);
    expect(a.requests).toHaveLength(7);
  });

  it('a failed probe re-opens it at once, for twice open_ms', async () => {
    const a = await h.sim('a', { status: 500 });
    const b = await h.sim('b');
    const openMs = 400;
    await h.gateway([a, b], { breaker: { open_ms: openMs } });
    await h.chat();
    await h.chat();
    const opened = await h.breaker('a/m');
    expect(opened.state).toBe('open');
    await sleep(opened.ms_until_half_open + 20);
    expect((await h.breaker('a/m')).state).toBe('half_open');
    const probe = await h.chat();
    expect(probe.status).toBe(200);
    expect(probe.headers['x-router-trail']).toBe('a/m=http_500');
    expect(a.requests).toHaveLength(3);
    const reopened = await h.breaker('a/m');
    expect(reopened.state).toBe('open');
    expect(reopened.opens).toBe(2);
    expect(reopened.trip_cause).toBe('errors');
    expect(reopened.open_ms).toBe(2 * openMs);
    expect(reopened.ms_until_half_open).toBeGreaterThan(openMs);
    expect(reopened.ms_until_half_open).toBeLessThanOrEqual(2 * openMs);
  });

  it('timeouts trip it too, with the cause shown, and the gateway keeps serving from b on time', async () => {
    const a = await h.sim('a', { hang: true });
    const b = await h.sim('b');
    await h.gateway([a, b], { tight: ['a'] });
    for (let i = 0; i < 2; i++) {
      const r = await h.chat({ stream: true });
      expect(r.status).toBe(200);
      expect(r.headers['x-router-trail']).toBe('a/m=first_byte_timeout');
    }
    const br = await h.breaker('a/m');
    expect(br.state).toBe('open');
    expect(br.trip_cause).toBe('timeouts');
    const fast = await h.chat({ stream: true });
    expect(fast.headers['x-router-attempts']).toBe('1');
    expect(a.requests).toHaveLength(2);
    // Both hung requests were aborted, nothing is left open at a.
    await h.until(() => expect(a.inFlight()).toBe(0));
  });
});

describe('under load, with one of three upstreams flapping', () => {
  it('200 requests (20 at a time): each succeeds or gets an OpenAI error on time, and the flapper loses traffic while failing', async () => {
    const a = await h.sim('a', { latencyMs: 40, chunkDelayMs: 10, completionTokens: 4 });
    const b = await h.sim('b', { latencyMs: 40, chunkDelayMs: 10, completionTokens: 4 });
    const c = await h.sim('c', { latencyMs: 40, chunkDelayMs: 10, completionTokens: 4, status: 500 });
    const totalTimeoutMs = 2000;
    await h.gateway([a, b, c], { strategy: 'round-robin', routing: { total_timeout_ms: totalTimeoutMs } });

    // c alternates: 300 ms failing, 300 ms healthy; each phase is logged so requests can be assigned to one.
    const phases: Array<{ at: number; failing: boolean }> = [{ at: Date.now(), failing: true }];
    const flap = setInterval(() => {
      const failing = !phases.at(-1)!.failing;
      c.set({ status: failing ? 500 : undefined });
      phases.push({ at: Date.now(), failing });
    }, 300);
    const failingAt = (t: number): boolean => {
      let f = true;
      for (const p of phases) if (p.at <= t) f = p.failing;
      return f;
    };

    const outcomes: Array<{ status: number; ok: boolean; ms: number; provider: unknown }> = [];
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < 200) {
        const i = next++;
        const r = await h.chat(i % 2 === 0 ? { stream: true } : {});
        let ok: boolean;
        if (r.status === 200) {
          ok =
            i % 2 === 0
              ? r.text.endsWith('data: [DONE]\n\n') && !r.text.includes('"error"')
              : Array.isArray(r.json.choices);
        } else {
          const e = r.json.error;
          ok = typeof e?.message === 'string' && typeof e.type === 'string' && 'code' in e && 'param' in e;
        }
        outcomes.push({ status: r.status, ok, ms: r.ms, provider: r.headers['x-router-provider'] });
      }
    };
    try {
      await Promise.all(Array.from({ length: 20 }, worker));
    } finally {
      clearInterval(flap);
    }

    expect(outcomes).toHaveLength(200);
    expect(outcomes.filter((o) => !o.ok)).toEqual([]);
    expect(Math.max(...outcomes.map((o) => o.ms))).toBeLessThan(totalTimeoutMs + 500);
    // Three upstreams and three attempts: a failing c is always failed over, so every request is answered.
    expect(outcomes.filter((o) => o.status === 200).length).toBeGreaterThanOrEqual(198);
    expect(phases.length).toBeGreaterThanOrEqual(3); // the run spanned failing and healthy phases

    // While c was failing it got a small share of what a and b each got in the same phases.
    const inFailing = (s: typeof a): number => s.requests.filter((r) => failingAt(r.receivedAt)).length;
    const healthyShare = (inFailing(a) + inFailing(b)) / 2;
    expect(healthyShare).toBeGreaterThan(20);
    expect(inFailing(c)).toBeLessThan(healthyShare * 0.5);
    // Overall, too: round-robin alone would have given it a third.
    expect(c.requests.length).toBeLessThan((a.requests.length + b.requests.length) / 2);

    // Nothing left behind once the load is over.
    await h.until(async () => {
      for (const up of (await h.status()).values()) {
        expect(up.in_flight).toBe(0);
        expect(up.pool.running).toBe(0);
      }
    });
  });
});
