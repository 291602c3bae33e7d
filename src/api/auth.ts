/**
 * Bearer tokens, stored hashed: the API keeps only SHA-256 hashes of its tokens and compares
 * the hash of a presented token with each of them in constant time.
 *
 * Sources: FERRY_API_TOKEN (a token; hashed at start, scope write, name `env`) and a tokens
 * file (FERRY_API_TOKENS_FILE / --tokens-file), one token a line:
 *
 *   # sha256 of the token            scope   name
 *   9f86d081884c7d65…0f00a08          write   ticketing
 *   60303ae22b998861…bce7b3b          read    auditor
 *
 * `read` tokens may GET; `write` tokens may also POST. Make a line with
 * `printf %s "$TOKEN" | sha256sum`.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import { UsageError } from '../common/errors';

export type Scope = 'read' | 'write';

/** Why the API does not start without a token (there is no default one), and how to give it one. */
export const API_TOKEN_REQUIRED =
  '--listen: the API needs a token and has no default: set FERRY_API_TOKEN (e.g. export FERRY_API_TOKEN=$(openssl rand -hex 16)) or a tokens file of SHA-256 hashes (FERRY_API_TOKENS_FILE / --tokens-file)';

export interface ApiToken {
  hash: Buffer;
  scope: Scope;
  name: string;
}

export function sha256(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

export function sha256Hex(token: string): string {
  return sha256(token).toString('hex');
}

export function parseTokensFile(text: string, file = 'tokens file'): ApiToken[] {
  const out: ApiToken[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*$/, '').trim();
    if (!line) return;
    const [hash, scope = 'write', name = `token-${i + 1}`] = line.split(/\s+/);
    if (!hash || !/^[0-9a-f]{64}$/i.test(hash)) throw new UsageError(`${file}:${i + 1}: expected a SHA-256 hash (64 hex digits), not '${(hash ?? '').slice(0, 12)}…'`);
    if (scope !== 'read' && scope !== 'write') throw new UsageError(`${file}:${i + 1}: scope must be read or write, not '${scope}'`);
    out.push({ hash: Buffer.from(hash, 'hex'), scope, name });
  });
  return out;
}

export function loadTokens(opts: { token?: string | null; tokensFile?: string | null }): ApiToken[] {
  const tokens: ApiToken[] = [];
  if (opts.token) tokens.push({ hash: sha256(opts.token), scope: 'write', name: 'env' });
  if (opts.tokensFile) {
    let text: string;
    try {
      text = fs.readFileSync(opts.tokensFile, 'utf8');
    } catch (e) {
      throw new UsageError(`tokens file ${opts.tokensFile}: ${(e as Error).message}`);
    }
    tokens.push(...parseTokensFile(text, opts.tokensFile));
  }
  return tokens;
}

export type AuthResult = { ok: true; token: ApiToken } | { ok: false; status: 401 | 403; message: string };

/** Check an Authorization header for the scope a request needs. */
export function authorize(header: string | undefined, tokens: readonly ApiToken[], need: Scope): AuthResult {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  if (!m) return { ok: false, status: 401, message: 'missing bearer token (Authorization: Bearer <token>)' };
  const presented = sha256(m[1]!);
  let found: ApiToken | null = null;
  // Compare with every stored hash, whatever matched before: no early exit.
  for (const t of tokens) {
    if (timingSafeEqual(presented, t.hash) && found === null) found = t;
  }
  if (!found) return { ok: false, status: 401, message: 'invalid bearer token' };
  if (need === 'write' && found.scope !== 'write') return { ok: false, status: 403, message: `token '${found.name}' may only read (scope read); this request needs a write token` };
  return { ok: true, token: found };
}

/**
 * The dashboard's session: the token itself in an HttpOnly, SameSite=Strict cookie set by
 * POST /ui/login once the token is valid (page script never reads it). A request carrying
 * that cookie and no Authorization header is authorized by it; a state-changing one must
 * also carry `X-Ferry-CSRF: 1`, a header another site's form or link cannot add.
 */
export const SESSION_COOKIE = 'ferry_token';
export const CSRF_HEADER = 'x-ferry-csrf';

/** The session cookie's token, or null. */
export function cookieToken(cookieHeader: string | undefined): string | null {
  for (const part of (cookieHeader ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0 || part.slice(0, eq).trim() !== SESSION_COOKIE) continue;
    try {
      const v = decodeURIComponent(part.slice(eq + 1).trim());
      return /^\S+$/.test(v) ? v : null;
    } catch {
      return null;
    }
  }
  return null;
}

/** Authorize a request by its bearer token or, without one, by the dashboard's session cookie. */
export function authorizeRequest(req: { method?: string; headers: { authorization?: string; cookie?: string; [h: string]: unknown } }, tokens: readonly ApiToken[], need: Scope): AuthResult {
  const fromCookie = req.headers.authorization ? null : cookieToken(req.headers.cookie);
  if (fromCookie === null) return authorize(req.headers.authorization, tokens, need);
  const safe = req.method === 'GET' || req.method === 'HEAD';
  if (!safe && req.headers[CSRF_HEADER] !== '1') return { ok: false, status: 403, message: `a dashboard session must send ${CSRF_HEADER}: 1 with a state-changing request` };
  return authorize(`Bearer ${fromCookie}`, tokens, need);
}
