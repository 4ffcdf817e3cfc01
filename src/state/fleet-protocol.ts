/** What replicas exchange through Redis: the Lua scripts RedisState runs, the breaker channel's messages. */
import type { TripCause } from '../resilience/breaker.js';

/**
 * Keeps the longer of two opens: the key is written only when it would outlive what is there, so a
 * replica that joins later adopts the longest open still running, not the last one published.
 */
export const SET_IF_LONGER = `local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[2]) then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return redis.call('PUBLISH', KEYS[2], ARGV[1])`;

/**
 * Takes (or renews: the holder asking again) the probe lease of an upstream whose open has ended. A key
 * another holder keeps with no expiry, or for longer than a lease lasts, is no lease of ours (another app's
 * key, a bug): it is taken over rather than keeping the fleet's breaker open for ever.
 */
export const TAKE_LEASE = `local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  local left = redis.call('PTTL', KEYS[1])
  if left >= 0 and left <= tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1`;

/** Gives a probe lease back, if it is still this replica's. */
export const END_LEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

export const TRIP_CAUSES: ReadonlySet<string> = new Set(['errors', 'timeouts', 'rate_limit']);

export interface OpenMessage {
  readonly id: string;
  readonly ms: number;
  readonly cause: TripCause;
  readonly origin: string;
}

/** A probe closed a breaker (same channel: replicas of an earlier version ignore it, lacking `ms`). */
export interface ClosedMessage {
  readonly id: string;
  readonly closed: true;
  readonly origin: string;
}
