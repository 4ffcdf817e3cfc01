/** The credentials in a config: a base_url's user and password as Basic auth, and every secret to scrub. */
import type { Config, ProviderConfig } from './schema.js';

/**
 * A base_url's user and password as the Basic `Authorization` they stand for (as curl and Python's requests
 * send them): undici's pool connects to the URL's origin, which has none, so they would be dropped.
 */
export function basicAuth(baseUrl: string): string | undefined {
  const u = new URL(baseUrl);
  if (u.username === '' && u.password === '') return undefined;
  const pair = `${decoded(u.username)}:${decoded(u.password)}`;
  return `Basic ${Buffer.from(pair, 'utf8').toString('base64')}`;
}

/** A URL part percent-decoded; as written when it is not valid percent-encoding (a literal `%`). */
function decoded(part: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

export function hasHeader(headers: Readonly<Record<string, string>> | undefined, name: string): boolean {
  return headers !== undefined && Object.keys(headers).some((k) => k.toLowerCase() === name);
}

/**
 * Header and query parameter names whose values are credentials (`api-key`, `x-goog-api-key`, `?key=`, Azure
 * Functions' `?code=`, a cookie). A value is taken for one only when it also looks like one (`credential`).
 */
const CREDENTIAL_NAME = /key|auth|token|secret|password|credential|signature|^sig$|^code$|cookie/i;

/**
 * A value that can be a credential: 8 or more characters with a digit, or 20 or more. Masking a setting
 * such as `x-auth-mode: none` or `?key_format=json` would corrupt ordinary text wherever it appears (a
 * passthrough answer's `"deleted":true`).
 */
export function credentialLike(v: string): boolean {
  return (v.length >= 8 && /\d/.test(v)) || v.length >= 20;
}
/**
 * An `Authorization`-style value's scheme (Bearer, Basic, Token, and any other one word: Yandex's `Api-Key`,
 * Elastic's `ApiKey`, DeepL's `DeepL-Auth-Key`): the credential after it is a secret on its own too.
 */
const AUTH_SCHEME = /^[A-Za-z][\w.-]*\s+(\S+)$/;

/**
 * What of ours a provider is sent, so what it can echo back: its key, a password in its base_url, and the
 * values of credential-named headers and base_url query parameters (Azure's `api-key`, a proxy's token).
 */
export function providerSecrets(p: ProviderConfig): string[] {
  const out: string[] = [];
  if (p.api_key !== undefined) out.push(p.api_key);
  const u = new URL(p.base_url);
  out.push(decoded(u.password), u.password);
  // A user name alone is a token (`https://TOKEN@host`: sent as Basic "TOKEN:"), when it looks like one.
  if (u.password === '' && credentialLike(decoded(u.username))) out.push(decoded(u.username), u.username);
  for (const [name, v] of u.searchParams) {
    // As configured and as sent (percent-encoded), either may be echoed.
    if (CREDENTIAL_NAME.test(name) && credentialLike(v)) out.push(v, encodeURIComponent(v));
  }
  for (const [name, v] of Object.entries(p.headers ?? {})) {
    if (!CREDENTIAL_NAME.test(name)) continue;
    const credential = AUTH_SCHEME.exec(v)?.[1];
    if (
      credential !== undefined &&
      (credentialLike(credential) || /^(?:Bearer|Basic|Token|Key)\s/i.test(v))
    ) {
      out.push(v, credential);
      // Basic's base64 stands for user:password: the password may be echoed on its own (or a token as
      // the user name, with none).
      if (/^Basic\s/i.test(v)) {
        const [user = '', ...rest] = Buffer.from(credential, 'base64').toString('utf8').split(':');
        const password = rest.join(':');
        out.push(password === '' && credentialLike(user) ? user : password);
      }
    } else if (credentialLike(v)) out.push(v);
  }
  return [...new Set(out)].filter((s) => s.length >= 4);
}

export function collectSecrets(config: Config): string[] {
  const out = new Set<string>();
  const add = (s: string | undefined): void => {
    if (s !== undefined && s.length >= 4) out.add(s);
  };
  for (const p of config.providers) providerSecrets(p).forEach(add);
  config.server.api_keys.forEach(add);
  add(config.server.admin_key);
  if (config.state.backend === 'redis') {
    try {
      add(decodeURIComponent(new URL(config.state.url).password));
    } catch {
      /* not a URL: nothing to hide */
    }
  }
  return [...out].sort((a, b) => b.length - a.length);
}
