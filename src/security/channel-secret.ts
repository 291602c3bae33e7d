/**
 * The per-migration secrets of the links between two agents — channel-2's HMAC handshake and
 * the QEMU relays' hello token — kept off Temporal's history.
 *
 * With a cluster key (src/common/cluster-key.ts) the target never hands out the secret: it
 * picks a random nonce and returns a grant `{keyId, nonce}`, which is all the workflow carries
 * to the source. Both agents derive the same secret from what only they hold:
 *
 *     secret = HMAC-SHA256(clusterKey[keyId], "ferry <purpose> secret v1" ‖ 0 ‖ migrationId ‖ 0 ‖ nonce)
 *
 * Whoever reads the history (the namespace, the Temporal UI, an exported history) sees the key
 * id and the nonce, neither of which helps to compute the secret. The key id lets a source
 * find the key the target used while keys rotate (FERRY_CLUSTER_KEY_PREVIOUS).
 *
 * Without a cluster key the agent falls back to a random secret that travels in the history
 * (the agent says so when it starts); every shipped topology configures a key.
 */
import { createHmac, randomBytes } from 'node:crypto';
import type { ClusterKeys } from '../common/cluster-key';

export type ChannelPurpose = 'channel-2' | 'qemu-relay';

/** What the history carries instead of a secret. */
export interface ChannelGrant {
  /** Id of the cluster key the secret is derived from. */
  keyId: string;
  /** 16 random bytes, hex: a fresh secret per migration attempt. */
  nonce: string;
}

/** A grant the receiving agent cannot use (unknown key id, malformed nonce). */
export class ChannelGrantError extends Error {
  override name = 'ChannelGrantError';
}

function derive(key: Buffer, purpose: ChannelPurpose, migrationId: string, nonce: string): string {
  return createHmac('sha256', key).update(`ferry ${purpose} secret v1\0${migrationId}\0${nonce}`, 'utf8').digest('hex');
}

/** Target: a new grant with the current key, and the secret it stands for. */
export function grantSecret(keys: ClusterKeys, purpose: ChannelPurpose, migrationId: string): { grant: ChannelGrant; secret: string } {
  const nonce = randomBytes(16).toString('hex');
  return { grant: { keyId: keys.current.id, nonce }, secret: derive(keys.current.key, purpose, migrationId, nonce) };
}

/** Either end: the secret a grant stands for (the source, or a target answering a retry). */
export function secretOfGrant(keys: ClusterKeys | null, purpose: ChannelPurpose, migrationId: string, grant: ChannelGrant): string {
  if (!/^[0-9a-f]{32}$/.test(grant.nonce)) throw new ChannelGrantError(`${purpose} grant of migration ${migrationId}: malformed nonce`);
  if (!keys) {
    throw new ChannelGrantError(
      `${purpose} of migration ${migrationId}: the target derived its secret from cluster key ${grant.keyId}, and this agent has no cluster key (set FERRY_CLUSTER_KEY_FILE)`,
    );
  }
  const k = keys.byId(grant.keyId);
  if (!k) {
    throw new ChannelGrantError(
      `${purpose} of migration ${migrationId}: the target used cluster key ${grant.keyId}; this agent holds ${[keys.current.id, keys.previous?.id].filter(Boolean).join(' and ')} (configure the same key on both, FERRY_CLUSTER_KEY_PREVIOUS during a rotation)`,
    );
  }
  return derive(k.key, purpose, migrationId, grant.nonce);
}

/**
 * The secret a source uses: derived from the grant, or (a target without a cluster key, or a
 * migration begun before keys were configured) the one the history carried.
 */
export function sourceSecret(
  keys: ClusterKeys | null,
  purpose: ChannelPurpose,
  migrationId: string,
  input: { secret?: string; grant?: ChannelGrant },
): string {
  if (input.grant) return secretOfGrant(keys, purpose, migrationId, input.grant);
  if (input.secret !== undefined && input.secret !== '') return input.secret;
  throw new ChannelGrantError(`${purpose} of migration ${migrationId}: the target sent neither a grant nor a secret`);
}
