import type { TierName } from '../config/schema.js';
import type { Gateway } from '../gateway.js';
import type { RouteRuntime } from '../runtime.js';

/** A bounded LRU with expiry, keyed by a hash of the excerpt (Map keeps insertion order: oldest first). */
export class RouterCache {
  private readonly map = new Map<string, { tier: TierName; reason: string; expiresAt: number }>();

  constructor(
    private readonly maxEntries: number,
    private readonly ttlMs: number,
  ) {}

  get(key: string, now: number): { tier: TierName; reason: string } | undefined {
    const hit = this.map.get(key);
    if (!hit) return undefined;
    if (hit.expiresAt <= now) {
      this.map.delete(key);
      return undefined;
    }
    this.map.delete(key);
    this.map.set(key, hit);
    return hit;
  }

  /** A live answer without touching the cache (its order, or an expired entry): for a dry run. */
  peek(key: string, now: number): { tier: TierName; reason: string } | undefined {
    const hit = this.map.get(key);
    return hit && hit.expiresAt > now ? hit : undefined;
  }

  set(key: string, value: { tier: TierName; reason: string }, now: number): void {
    if (this.ttlMs <= 0) return;
    this.map.delete(key);
    this.map.set(key, { tier: value.tier, reason: value.reason, expiresAt: now + this.ttlMs });
    while (this.map.size > this.maxEntries) {
      const oldest = this.map.keys().next().value;
      if (oldest === undefined) break;
      this.map.delete(oldest);
    }
  }

  get size(): number {
    return this.map.size;
  }
}

/** The cache found for a route's loaded `router` config: asked on every router call. */
const cacheOfConfig = new WeakMap<object, RouterCache>();
/** Per gateway, by route name: that route's cache and what it was made for (`cacheFor`). */
const caches = new WeakMap<Gateway, Map<string, { readonly made: string; readonly cache: RouterCache }>>();

/**
 * The route's answer cache. It outlives a reload that keeps the route's tiers, router tier and cache
 * settings (a reload to change a price must not start every prompt's router call over); otherwise it starts
 * empty.
 */
export function cacheFor(gw: Gateway, route: RouteRuntime): RouterCache | undefined {
  const cfg = route.router;
  if (!cfg) return undefined;
  const known = cacheOfConfig.get(cfg);
  if (known) return known;
  const made = `${Object.keys(route.tiers ?? {})
    .sort()
    .join()}\n${cfg.tier}\n${cfg.cache_size}\n${cfg.cache_ttl_s}`;
  let byRoute = caches.get(gw);
  if (!byRoute) caches.set(gw, (byRoute = new Map()));
  // A new config (this runs once per route and load): the caches of routes it no longer has are dropped.
  for (const name of byRoute.keys()) {
    if (name !== route.name && gw.runtime.routes.get(name)?.router === undefined) byRoute.delete(name);
  }
  let entry = byRoute.get(route.name);
  if (entry?.made !== made) {
    entry = { made, cache: new RouterCache(cfg.cache_size, cfg.cache_ttl_s * 1000) };
    byRoute.set(route.name, entry);
  }
  cacheOfConfig.set(cfg, entry.cache);
  return entry.cache;
}
