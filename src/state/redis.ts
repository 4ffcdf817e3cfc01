/**
 * Scale-out (SPEC §7): breaker opens, statistics and round-robin turns shared by the replicas of one
 * fleet through Redis. Every decision still reads only local memory, so Redis is never on a request's
 * path and a request never waits for it or fails because of it:
 * - a breaker that opens here is written to Redis (a key that expires when the open ends) and published;
 *   the other replicas open theirs until the same moment, and a replica that starts or reconnects adopts
 *   the opens still running;
 * - every `syncMs` each replica writes its own measurements of each upstream (a hash field per replica)
 *   and reads the others', merged into the view its strategies blend with their own (stats.ts); the same
 *   for the per-minute budget windows (rpm, tpm), summed into what each replica counts against the limits;
 * - a round-robin turn is an INCR of the route's shared counter; the answer moves the local rotation to
 *   the fleet's count, so replicas that take turns with requests also take turns with upstreams.
 * While Redis is unreachable, commands fail at once (no offline queue), the other replicas' view is
 * dropped (local state only), and the client reconnects in the background.
 */
import { randomUUID } from 'node:crypto';
import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from '../observability/logger.js';
import type { TripCause } from '../resilience/breaker.js';
import { QUOTA_WINDOW_MS, type Leaving, type QuotaUse } from '../resilience/quota.js';
import type { SharedStats } from '../routing/stats.js';
import { parseJsonObject } from '../upstream/adapters/common.js';
import { isFiniteNonNegative, mergeStats, parsePublished, type Published } from './published-stats.js';
import {
  END_LEASE,
  SET_IF_LONGER,
  TAKE_LEASE,
  TRIP_CAUSES,
  type ClosedMessage,
  type OpenMessage,
} from './fleet-protocol.js';

export interface RedisStateConfig {
  readonly url: string;
  readonly key_prefix?: string | undefined;
}

/** What the sync reads from and applies to this replica's state. */
/** Redis refusing a database: `ERR DB index is out of range`, `ERR invalid DB index`. */
const DB_REFUSED = /DB index is out of range|invalid DB index/i;

export interface StateHooks {
  /**
   * Another replica opened `upstreamId`'s breaker for `remainingMs` more, at backoff level `levelMs` (the whole
   * open's length); false when that upstream is not configured here.
   */
  adoptOpen(upstreamId: string, remainingMs: number, cause: TripCause, levelMs: number): boolean;
  /** Another replica's probe closed `upstreamId`'s breaker. */
  adoptClose(upstreamId: string): void;
  /** This replica's own measurements, per upstream id. */
  localStats(): Iterable<readonly [string, SharedStats | undefined]>;
  /** The other replicas' merged measurements of `upstreamId` (undefined: none, or Redis is down). */
  setRemote(upstreamId: string, view: SharedStats | undefined): void;
  /** This replica's per-minute budget windows (rpm, tpm), per upstream id that has one. */
  localQuotas(): Iterable<readonly [string, QuotaUse]>;
  /** The other replicas' windows of `upstreamId`, summed (undefined: none, or Redis is down). */
  setRemoteQuota(upstreamId: string, use: QuotaUse | undefined): void;
  /** This replica's breakers open now, with the time they have left: shared again after an outage. */
  openBreakers(): Iterable<readonly [string, number, TripCause]>;
}

export interface RedisStateOptions {
  /** How often measurements are exchanged, ms. */
  readonly syncMs?: number;
}

const DEFAULT_PREFIX = 'llm-router:';
const DEFAULT_SYNC_MS = 1_000;
/** A replica's statistics older than this are a replica that stopped: ignored, then removed. */
const STALE_AFTER_MS = 10_000;
/** Above any real minute's count (a replica's requests or tokens): a larger one is not a replica's. */
const MAX_QUOTA_FIGURE = 1e12;
/** Commands that get no answer in this long fail: a stalled Redis is treated like an unreachable one. */
const COMMAND_TIMEOUT_MS = 1_000;
/** Round-robin INCRs a route may have unanswered; past it, turns stay local until Redis answers. */
const MAX_PENDING_TURNS = 64;
/** A round-robin count past this starts again from 0. */
const MAX_TURN = 2 ** 30;
/**
 * A round-robin counter no replica has turned for this long is deleted by Redis (a route removed or renamed
 * by a reload, a replaced key prefix): its next turn starts the rotation from 1 again, which costs nothing.
 */
const TURN_KEY_TTL_MS = 60 * 60_000;
/** How often a replica renews a counter's expiry while it turns it (one PEXPIRE per route per minute). */
const TURN_KEY_RENEW_MS = 60_000;

/** Redis's answer to a command on a key that holds another type, or text where a number belongs. */
function isWrongValue(err: unknown): boolean {
  return (
    err instanceof Error && (err.message.startsWith('WRONGTYPE') || err.message.includes('not an integer'))
  );
}

/** The URL without credentials or path, for logs. */
function where(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}`;
  } catch {
    return 'redis';
  }
}

export class RedisState {
  /** This replica, as the other replicas see it. */
  readonly replicaId = randomUUID();
  readonly #cmd: Redis;
  readonly #sub: Redis;
  readonly #prefix: string;
  readonly #channel: string;
  readonly #hooks: StateHooks;
  readonly #logger: Logger;
  readonly #where: string;
  readonly #syncMs: number;
  #timer: NodeJS.Timeout | undefined;
  #syncing = false;
  /** Whether the last state logged was "reachable": an outage is logged once, not on every retry. */
  #reachable: boolean | undefined;
  #closed = false;
  /** The configured database was selected on this connection (see #ready). */
  #dbChecked = false;
  /** Round-robin INCRs sent and not yet answered, per route: turns this replica took meanwhile. */
  readonly #pendingTurns = new Map<string, number>();
  /** When this replica last renewed each round-robin counter's expiry (Date.now()). */
  readonly #turnKeyRenewed = new Map<string, number>();
  /**
   * Redis's clock less this machine's, ms (undefined until first read). Measurements are stamped and aged on
   * Redis's clock: a replica whose own clock is off would otherwise see every other's as stale and delete it.
   */
  #clockOffsetMs: number | undefined;
  /** Kinds of error Redis answered with, each said once (#refused). */
  readonly #refusals = new Set<string>();

  constructor(cfg: RedisStateConfig, hooks: StateHooks, logger: Logger, opts: RedisStateOptions = {}) {
    this.#prefix = cfg.key_prefix ?? DEFAULT_PREFIX;
    // ioredis turns TLS on for a `rediss://` it sees in lower case only: `REDISS://` went out in clear.
    const url = cfg.url.replace(/^[a-z][a-z0-9+.-]*:/i, (scheme) => scheme.toLowerCase());
    this.#hooks = hooks;
    this.#logger = logger;
    this.#where = where(cfg.url);
    this.#syncMs = opts.syncMs ?? DEFAULT_SYNC_MS;
    const options: RedisOptions = {
      lazyConnect: true,
      // Fail at once while disconnected: nothing waits for Redis.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      connectTimeout: 2_000,
      commandTimeout: COMMAND_TIMEOUT_MS,
      // Jittered: replicas (two connections each) that lost Redis together do not all come back at once.
      retryStrategy: (attempt) => Math.round(Math.min(100 * attempt, 2_000) * (0.5 + Math.random() / 2)),
    };
    this.#cmd = new Redis(url, options);
    // Pub/sub ignores the database: a fleet on another database of the same Redis must not hear ours (the
    // default database keeps the channel's first name, which replicas of an earlier version listen on).
    const db = this.#cmd.options.db ?? 0;
    this.#channel = `${this.#prefix}breaker-opens${db === 0 ? '' : `:db${db}`}`;
    this.#cmd.on('error', (err: Error) => this.#down(err));
    // The subscriber only listens: reachability is the command connection's to judge and log. It
    // subscribes on every (re)connection: one that failed while Redis was down is never retried by ioredis.
    // Not ioredis's own resubscribe: it sends SUBSCRIBE with no handler on its answer, and a connection lost or
    // closed before the answer (Redis flapping, a shutdown just after a reconnect) rejected it unhandled, which
    // ends a Node process. The 'ready' handler below subscribes on every connection, its answer handled.
    this.#sub = new Redis(url, { ...options, commandTimeout: undefined, autoResubscribe: false });
    this.#sub.on('error', () => {});
    this.#sub.on('ready', () => {
      // Opens published while this connection was away were missed: the running ones are read once more.
      this.#sub.subscribe(this.#channel).then(
        () => {
          if (this.connected) void this.#adoptRunningOpens();
        },
        () => {},
      );
    });
    this.#cmd.on('ready', () => this.#ready());
    this.#cmd.on('end', () => this.#down(undefined));
    this.#cmd.on('close', () => this.#down(undefined));
    this.#sub.on('message', (channel: string, message: string) => {
      if (channel === this.#channel) this.#onOpenMessage(message);
    });
  }

  /** Connects in the background; the gateway serves on local state until (and whenever) Redis is there. */
  start(): void {
    this.#cmd.connect().catch(() => {
      /* retried by ioredis; logged by the error handler */
    });
    this.#sub.connect().catch(() => {});
    this.#timer = setInterval(() => void this.sync(), this.#syncMs).unref();
  }

  /** Connected to the database configured: until its SELECT is answered, nothing is shared (it may be db 0). */
  get connected(): boolean {
    return !this.#closed && this.#dbChecked && this.#cmd.status === 'ready';
  }

  /** This replica opened `upstreamId`'s breaker for `ms`: the others skip it too until then. */
  publishOpen(upstreamId: string, ms: number, cause: TripCause): void {
    if (!this.connected || !(ms > 0)) return;
    const msg: OpenMessage = { id: upstreamId, ms: Math.ceil(ms), cause, origin: this.replicaId };
    const text = JSON.stringify(msg);
    this.#cmd
      .eval(SET_IF_LONGER, 2, `${this.#prefix}breaker:${upstreamId}`, this.#channel, text, msg.ms)
      // An outage: the others fall back to their own breakers (and get this one at reconnect).
      .catch((err: unknown) => this.#failed(err));
  }

  /**
   * Asks for the right to probe `upstreamId` now that its open has ended, for `ms`: true for one replica of
   * the fleet at a time. Rejects when Redis is not there (the caller probes on its own then).
   */
  async takeProbeLease(upstreamId: string, ms: number): Promise<boolean> {
    if (!this.connected) throw new Error('Redis is not connected');
    try {
      const took = await this.#cmd.eval(TAKE_LEASE, 1, this.#leaseKey(upstreamId), this.replicaId, ms);
      return took === 1;
    } catch (err) {
      this.#failed(err);
      throw err;
    }
  }

  /** This replica's probing of `upstreamId` is over (closed or re-opened): the lease goes back. */
  endProbeLease(upstreamId: string): void {
    if (!this.connected) return;
    this.#cmd
      .eval(END_LEASE, 1, this.#leaseKey(upstreamId), this.replicaId)
      .catch((err: unknown) => this.#failed(err));
  }

  /** This replica's probe closed `upstreamId`'s breaker: the replicas holding theirs open close them too. */
  publishClosed(upstreamId: string): void {
    if (!this.connected) return;
    const msg: ClosedMessage = { id: upstreamId, closed: true, origin: this.replicaId };
    this.#cmd.publish(this.#channel, JSON.stringify(msg)).catch((err: unknown) => this.#failed(err));
  }

  /**
   * A reload moved `upstreamId` to another server, or gave it another key: the fleet's open (and probe
   * lease) were the old one's. Deleted, and the close published, so no replica keeps or adopts them.
   */
  forgetOpen(upstreamId: string): void {
    if (!this.connected) return;
    this.#cmd
      .del(`${this.#prefix}breaker:${upstreamId}`, this.#leaseKey(upstreamId))
      .catch((err: unknown) => this.#failed(err));
    this.publishClosed(upstreamId);
  }

  #leaseKey(upstreamId: string): string {
    return `${this.#prefix}probe:${upstreamId}`;
  }

  /**
   * A round-robin turn on a route (or one tier of it): counted in the fleet's counter; `apply` gets the
   * rotation to continue from (the fleet's count plus this replica's turns still in flight) when Redis answers.
   */
  takeTurn(routeName: string, tier: string | undefined, apply: (rotation: number) => void): void {
    if (!this.connected) return;
    // A tier's counter is a key family of its own: no route name, whatever it holds, can meet it.
    const route = tier === undefined ? `rr:${routeName}` : `rr-tier:${tier}:${routeName}`;
    const pending = this.#pendingTurns.get(route) ?? 0;
    if (pending >= MAX_PENDING_TURNS) return;
    this.#pendingTurns.set(route, pending + 1);
    /** This turn is answered: the turns still waiting after it. */
    const answered = (): number => {
      const left = (this.#pendingTurns.get(route) ?? 1) - 1;
      this.#pendingTurns.set(route, left);
      return left;
    };
    const key = `${this.#prefix}${route}`;
    this.#cmd.incr(key).then(
      (count) => {
        // Past MAX_TURN (a billion turns, or a value someone else wrote: past 2^53 INCR's answer reads as an
        // even float, one rotation for ever) the count starts again; the fleet's turns just jump once.
        if (count > MAX_TURN || !Number.isSafeInteger(count)) {
          void this.#cmd.set(key, '0', 'PX', TURN_KEY_TTL_MS).catch((err: unknown) => this.#failed(err));
          apply(answered());
        } else apply(count + answered());
      },
      (err: unknown) => {
        answered();
        this.#failed(err);
        // Not a counter (text, a hash: another app's key, a bug): made one again, not left to fail each turn.
        if (isWrongValue(err)) {
          void this.#cmd.del(key).catch(() => {});
          this.#turnKeyRenewed.delete(route); // the next turn's INCR makes a new key: it needs an expiry too
        }
      },
    );
    // Sent after the INCR on the same connection, so the key it creates exists when the PEXPIRE runs.
    const now = Date.now();
    if (now - (this.#turnKeyRenewed.get(route) ?? -Infinity) >= TURN_KEY_RENEW_MS) {
      // Names come from the config: a few per reload; a long life of reloads starts the map again.
      if (this.#turnKeyRenewed.size >= 4096) this.#turnKeyRenewed.clear();
      this.#turnKeyRenewed.set(route, now);
      void this.#cmd.pexpire(key, TURN_KEY_TTL_MS).catch((err: unknown) => this.#failed(err));
    }
  }

  /** One exchange of measurements (also run every `syncMs`): write ours, read and merge the others'. */
  async sync(): Promise<void> {
    if (this.#syncing || this.#closed) return;
    const ids: string[] = [];
    if (!this.connected) {
      this.#dropRemote();
      return;
    }
    this.#syncing = true;
    try {
      const sent = Date.now();
      this.#clockOffsetMs ??= await this.#readClock(sent);
      const nowWall = sent + this.#clockOffsetMs;
      const tx = this.#cmd.pipeline();
      tx.time(); // the offset again, for the next exchange (clocks drift, and get set)
      /** Where each id's HGETALL answer is in the pipeline's results. */
      const readAt: number[] = [];
      let n = 1;
      for (const [id, view] of this.#hooks.localStats()) {
        ids.push(id);
        const key = `${this.#prefix}stats:${id}`;
        if (view !== undefined) {
          tx.hset(key, this.replicaId, JSON.stringify({ ...view, at: nowWall }));
          tx.pexpire(key, STALE_AFTER_MS * 3);
          n += 2;
        }
        tx.hgetall(key);
        readAt.push(n++);
      }
      /** The budgets' windows: each id's HGETALL answer's place, as for the statistics. */
      const quotaIds: string[] = [];
      const quotaAt: number[] = [];
      for (const [id, use] of this.#hooks.localQuotas()) {
        const key = `${this.#prefix}quota:${id}`;
        tx.hset(key, this.replicaId, JSON.stringify({ ...use, at: nowWall }));
        // Kept while a stopped replica's requests are still in the window, even with no replica left writing.
        tx.pexpire(key, QUOTA_WINDOW_MS + STALE_AFTER_MS);
        tx.hgetall(key);
        quotaIds.push(id);
        quotaAt.push(n + 2);
        n += 3;
      }
      const results = (await tx.exec()) ?? [];
      // A pipeline resolves with each command's error in place: a timed-out one is a stalled Redis.
      const failed = results.find(([e]) => e !== null)?.[0];
      if (failed) this.#failed(failed);
      const time = results[0]?.[1];
      if (Array.isArray(time)) this.#clockOffsetMs = clockOffset(time, sent, Date.now());
      for (const [i, id] of ids.entries()) {
        const reply = results[readAt[i]!];
        // Not a hash (another app's key, a bug): deleted, so the next exchange writes ours again; it would
        // otherwise be refused every time, and kept alive by our own PEXPIRE.
        if (isWrongValue(reply?.[0])) void this.#cmd.del(`${this.#prefix}stats:${id}`).catch(() => {});
        const fields = (reply === undefined || reply[0] ? undefined : reply[1]) as
          Record<string, string> | undefined;
        const others: Published[] = [];
        const stale: string[] = [];
        for (const [replica, text] of Object.entries(fields ?? {})) {
          if (replica === this.replicaId) continue;
          const p = parsePublished(text);
          // Stale either way: a replica that stopped, or one whose clock runs ahead (it would never go stale).
          if (p === undefined || Math.abs(nowWall - p.at) > STALE_AFTER_MS) stale.push(replica);
          else others.push(p);
        }
        if (stale.length > 0) void this.#cmd.hdel(`${this.#prefix}stats:${id}`, ...stale).catch(() => {});
        this.#hooks.setRemote(id, mergeStats(others, nowWall));
      }
      for (const [i, id] of quotaIds.entries()) {
        const reply = results[quotaAt[i]!];
        if (isWrongValue(reply?.[0])) void this.#cmd.del(`${this.#prefix}quota:${id}`).catch(() => {});
        const fields = (reply === undefined || reply[0] ? undefined : reply[1]) as
          Record<string, string> | undefined;
        this.#hooks.setRemoteQuota(id, this.#othersUse(fields, nowWall, `${this.#prefix}quota:${id}`));
      }
    } catch (err) {
      for (const id of ids) this.#hooks.setRemote(id, undefined);
      for (const [id] of this.#hooks.localQuotas()) this.#hooks.setRemoteQuota(id, undefined);
      this.#failed(err);
    } finally {
      this.#syncing = false;
    }
  }

  /**
   * Redis's clock less ours, from one TIME asked at `sent`; 0 (our clock) where TIME is refused (an ACL
   * without it, a proxy that does not implement it): sharing goes on, dated as before.
   */
  async #readClock(sent: number): Promise<number> {
    try {
      return clockOffset(await this.#cmd.time(), sent, Date.now());
    } catch (err) {
      this.#failed(err); // a stall is one still
      return 0;
    }
  }

  /**
   * A command failed. One that timed out is a stalled Redis: it is down (logged once, the others' view
   * dropped) and the connection is made anew, which fails the commands queued behind it — a timed-out
   * command stays queued and would run when the stall ends: a round-robin INCR past the bound of unanswered
   * turns, an open published with the time it had before the stall.
   */
  #failed(err: unknown): void {
    if (err instanceof Error && err.name === 'ReplyError') {
      this.#refused(err);
      return;
    }
    if (!(err instanceof Error) || err.message !== 'Command timed out') return;
    if (this.#closed || this.#cmd.status !== 'ready') return;
    this.#down(err);
    this.#cmd.disconnect(true);
  }

  close(): void {
    this.#closed = true;
    clearInterval(this.#timer);
    // Not QUIT: its answer would hold the shutdown as long as a stalled Redis does.
    this.#cmd.disconnect();
    this.#sub.disconnect();
  }

  #onOpenMessage(text: string): void {
    const m = parseJsonObject(text);
    if (m === undefined) return;
    if (m.closed === true) {
      if (m.origin !== this.replicaId && typeof m.id === 'string') this.#hooks.adoptClose(m.id);
    } else this.#adopt(m, m.ms);
  }

  /**
   * Another replica's open (a message, or a key read with `ms` its time left), checked before it is applied. Its
   * backoff level is the open's whole length (`m.ms`), not the time left: a replica that joined (or came back)
   * late in a re-opened breaker's open took the few hundred ms left as the fleet's backoff, and its failed
   * probe re-opened from there instead of doubling.
   */
  #adopt(m: Partial<Record<keyof OpenMessage, unknown>>, ms: unknown): void {
    if (m.origin === this.replicaId || typeof m.id !== 'string') return;
    if (!isFiniteNonNegative(ms) || typeof m.cause !== 'string' || !TRIP_CAUSES.has(m.cause)) return;
    const level = isFiniteNonNegative(m.ms) && m.ms >= ms ? m.ms : ms;
    this.#hooks.adoptOpen(m.id, ms, m.cause as TripCause, level);
  }

  /**
   * Connected (again): adopt the opens still running, share this replica's own (some may have opened while
   * Redis was away), exchange measurements at once.
   */
  #ready(): void {
    const db = this.#cmd.options.db ?? 0;
    this.#dbChecked = db === 0;
    if (db !== 0) {
      // ioredis selects the database as it connects but goes on 'ready' in database 0 when Redis refuses it
      // (out of range: ERR DB index is out of range): that replica would share with database 0's fleet and
      // say it was connected. Checked here: refused, the shared state is off and this replica serves alone.
      this.#cmd.select(db).then(
        () => this.#readyIn(),
        (err: unknown) => this.#refuseDatabase(db, err),
      );
      return;
    }
    this.#readyIn();
  }

  #refuseDatabase(db: number, err: unknown): void {
    if (this.#closed) return;
    // Only Redis saying no: a timeout or a dropped connection is an outage like any, retried on reconnect.
    if (!DB_REFUSED.test((err as Error)?.message ?? '')) return this.#failed(err);
    this.#logger.error(
      { redis: this.#where, db, err: (err as Error)?.message },
      `shared state: Redis refuses database ${db}: not shared; this replica serves on its own state`,
    );
    this.close();
  }

  #readyIn(): void {
    this.#dbChecked = true;
    this.#refusals.clear();
    if (this.#reachable !== true) {
      this.#logger.info({ redis: this.#where }, 'shared state: connected to Redis');
      this.#reachable = true;
    }
    void this.#adoptRunningOpens();
    for (const [id, ms, cause] of this.#hooks.openBreakers()) this.publishOpen(id, ms, cause);
    void this.sync();
  }

  async #adoptRunningOpens(): Promise<void> {
    try {
      const keys: string[] = [];
      let cursor = '0';
      do {
        const [next, batch] = await this.#cmd.scan(
          cursor,
          'MATCH',
          `${globEscaped(this.#prefix)}breaker:*`,
          'COUNT',
          100,
        );
        keys.push(...batch);
        cursor = next;
      } while (cursor !== '0' && keys.length < 10_000);
      for (const key of keys) {
        const [[, text], [, ttl]] = ((await this.#cmd.multi().get(key).pttl(key).exec()) ?? []) as [
          [Error | null, string | null],
          [Error | null, number],
        ];
        const m = typeof text === 'string' && ttl > 0 ? parseJsonObject(text) : undefined;
        if (m) this.#adopt(m, ttl);
      }
    } catch (err) {
      this.#failed(err); // an outage mid-way: the next reconnect tries again
    }
  }

  /**
   * Redis answered a command with an error (out of memory, read-only, an ACL refusal, a key of the wrong
   * type): it is there, so not down, but what it refuses is not shared. Said once per kind of refusal (its
   * first word: OOM, READONLY, NOPERM, WRONGTYPE...) until Redis reconnects, not once per command.
   */
  #refused(err: Error): void {
    const kind = /^[A-Z]+/.exec(err.message)?.[0] ?? 'ERR';
    if (this.#closed || this.#refusals.has(kind) || this.#refusals.size >= 16) return;
    this.#refusals.add(kind);
    this.#logger.warn(
      { redis: this.#where, error: err.message.slice(0, 200) },
      `shared state: Redis refuses commands (${kind}): what it refuses is not shared; this replica serves on its own state for it`,
    );
  }

  #down(err: Error | undefined): void {
    if (this.#closed || this.#reachable === false) return;
    this.#reachable = false;
    this.#logger.warn(
      { redis: this.#where, error: err?.message },
      "shared state: Redis unreachable; serving on this replica's own breakers and statistics until it is back",
    );
    this.#dropRemote();
    // A Redis that comes back may have lost its keys: the counters the next turns make need expiries again.
    this.#turnKeyRenewed.clear();
  }

  /**
   * The other replicas' budget windows in one hash, summed bucket by bucket, each figure checked (Redis is
   * shared: trust nothing). A bucket's time to leave the window is taken from the moment its replica wrote it,
   * so a replica that stopped (a rolling restart) still counts until its last requests leave the minute: the
   * provider counts them that long. Fields past that, dated ahead of Redis's clock, or malformed are deleted.
   */
  #othersUse(fields: Record<string, string> | undefined, nowWall: number, key: string): QuotaUse | undefined {
    let requests = 0;
    let tokens = 0;
    const leaving: Leaving[] = [];
    let any = false;
    const stale: string[] = [];
    for (const [replica, text] of Object.entries(fields ?? {})) {
      if (replica === this.replicaId) continue;
      const u = parseJsonObject(text);
      const age = u !== undefined && isFiniteNonNegative(u.at) ? nowWall - u.at : Number.NaN;
      const buckets = u === undefined ? undefined : quotaBuckets(u.leaving);
      if (!(age >= -STALE_AFTER_MS && age < QUOTA_WINDOW_MS) || buckets === undefined) {
        stale.push(replica);
        continue;
      }
      any = true;
      for (const [ms, r, t] of buckets) {
        const left = ms - Math.max(0, age);
        if (left <= 0) continue; // gone from the window since it was written
        leaving.push([left, r, t]);
        requests += r;
        tokens += t;
      }
    }
    if (stale.length > 0) void this.#cmd.hdel(key, ...stale).catch(() => {});
    return any ? { requests, tokens, leaving } : undefined;
  }

  /** Local state only: the other replicas' view is forgotten until Redis answers again. */
  #dropRemote(): void {
    for (const [id] of this.#hooks.localStats()) this.#hooks.setRemote(id, undefined);
    for (const [id] of this.#hooks.localQuotas()) this.#hooks.setRemoteQuota(id, undefined);
  }
}

/**
 * A replica's published buckets, `[ms until it leaves the window, requests, tokens]`, or undefined when any is
 * not: at most one per second of the window, each figure finite, non-negative and bounded.
 */
function quotaBuckets(value: unknown): Leaving[] | undefined {
  if (!Array.isArray(value) || value.length > 60) return undefined;
  const out: Leaving[] = [];
  for (const b of value) {
    if (!Array.isArray(b) || b.length !== 3) return undefined;
    const [ms, r, t] = b as unknown[];
    if (!isFiniteNonNegative(ms) || ms > 60_000 || !isFiniteNonNegative(r) || !isFiniteNonNegative(t))
      return undefined;
    if (r > MAX_QUOTA_FIGURE || t > MAX_QUOTA_FIGURE) return undefined;
    out.push([ms, r, t]);
  }
  return out;
}

/** Redis's TIME (seconds, microseconds) less the midpoint of the local clock while it was asked, ms. */
function clockOffset(time: unknown[], sent: number, received: number): number {
  const ms = Number(time[0]) * 1000 + Math.floor(Number(time[1]) / 1000);
  return Number.isFinite(ms) ? ms - Math.round((sent + received) / 2) : 0;
}

/** `text` as a literal inside a Redis glob pattern (a key prefix may hold `*`, `?`, `[`). */
function globEscaped(text: string): string {
  return text.replace(/[*?[\]\\]/g, '\\$&');
}
