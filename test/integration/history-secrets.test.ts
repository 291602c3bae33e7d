/**
 * Nothing secret and no guest memory in workflow history. A real pa-hybrid migration between
 * two agent processes that hold a cluster key runs on the dev server; then every payload of its
 * history — workflow input, memo, search attributes, every activity input and result, signals,
 * queries' updates, failures with their details — is decoded and searched for:
 *   - the channel-2 secret the agents used (recomputed from the grant in the history and the key),
 *     as hex, as raw bytes and as base64, and the cluster key itself;
 *   - pages of the guest (the emulated guest's content is a function of seed, pfn and version:
 *     real pages of this guest at the versions its workload reaches first), and any page header;
 *   - any field named like a secret, and any long hex string that is not a memory digest.
 * The same scan runs over every recorded history in test/replay/histories.
 */
import fs from 'node:fs';
import path from 'node:path';
import { defaultPayloadConverter } from '@temporalio/common';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeClusterKey, makeClusterKeys } from '../../src/common/cluster-key';
import { CONTROL_QUEUE } from '../../src/common/names';
import { EmulatedGuest } from '../../src/guest';
import { fillPage, PAGE_MAGIC } from '../../src/guest/core.js';
import { secretOfGrant, type ChannelGrant } from '../../src/security/channel-secret';
import type { FerryProcess } from '../../src/support/processes';
import type { MigrationReport } from '../../src/workflows/report';
import { HISTORY_DIR } from '../helpers/history';
import { startAgentProcess, startTestController, tempDir, uniqueHost, type TestController } from '../helpers/cluster';
import { createVm, MiB, startMigration } from '../helpers/migrate';

type History = ReturnType<typeof historyFromJSON>;

interface Blob {
  where: string;
  bytes: Buffer;
}

interface Needle {
  what: string;
  bytes: Buffer;
}

const PAGE_HEADER = Buffer.alloc(4);
PAGE_HEADER.writeUInt32LE(PAGE_MAGIC >>> 0);
const SECRET_FIELD = /secret|token|password|passphrase|private/i;

const isPayload = (o: Record<string, unknown>): o is { metadata?: Record<string, Uint8Array>; data?: Uint8Array } =>
  'data' in o && (o.data === undefined || o.data === null || o.data instanceof Uint8Array) && 'metadata' in o;

/**
 * Every byte string and text of a history: raw payload data, the JSON inside it (and what a
 * base64 or hex string in that JSON decodes to), every other string (failure messages, stack
 * traces, identities). `problems` collects secret-named fields and stray long hex strings.
 */
function blobsOf(history: History): { blobs: Blob[]; problems: string[]; payloads: number } {
  const blobs: Blob[] = [];
  const problems: string[] = [];
  let payloads = 0;
  const text = (where: string, s: string): void => {
    blobs.push({ where, bytes: Buffer.from(s, 'utf8') });
    if (s.length >= 16 && /^[A-Za-z0-9+/_-]+={0,2}$/.test(s)) blobs.push({ where: `${where} (base64-decoded)`, bytes: Buffer.from(s.replace(/-/g, '+').replace(/_/g, '/'), 'base64') });
    if (s.length >= 16 && s.length % 2 === 0 && /^[0-9a-fA-F]+$/.test(s)) blobs.push({ where: `${where} (hex-decoded)`, bytes: Buffer.from(s, 'hex') });
  };
  const walkJson = (v: unknown, where: string, key: string): void => {
    if (typeof v === 'string') {
      text(where, v);
      if (SECRET_FIELD.test(key) && v !== '') problems.push(`${where}: field '${key}' holds a value`);
      // Long hex runs: only memory digests (sha256) and the grant's nonce may carry one.
      for (const m of v.matchAll(/[0-9a-fA-F]{32,}/g)) {
        const digest = /digest/i.test(where) && m[0].length === 64;
        const nonce = key === 'nonce' && m[0].length === 32;
        if (!digest && !nonce) problems.push(`${where}: a ${m[0].length}-digit hex string in field '${key}'`);
      }
    } else if (Array.isArray(v)) v.forEach((x, i) => walkJson(x, `${where}[${i}]`, key));
    else if (v && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        if (SECRET_FIELD.test(k) && x !== null && x !== undefined && typeof x !== 'string') problems.push(`${where}.${k}: a field named like a secret`);
        walkJson(x, `${where}.${k}`, k);
      }
    }
  };
  const walk = (o: unknown, where: string): void => {
    if (o === null || o === undefined) return;
    if (o instanceof Uint8Array) {
      blobs.push({ where, bytes: Buffer.from(o) });
      return;
    }
    if (typeof o === 'string') {
      text(where, o);
      return;
    }
    if (Array.isArray(o)) {
      o.forEach((x, i) => walk(x, `${where}[${i}]`));
      return;
    }
    if (typeof o !== 'object') return;
    const obj = o as Record<string, unknown>;
    if (isPayload(obj)) {
      payloads++;
      const encoding = obj.metadata?.encoding ? Buffer.from(obj.metadata.encoding).toString() : '';
      if (encoding === 'json/plain' && obj.data) {
        const parsed = JSON.parse(Buffer.from(obj.data).toString('utf8')) as unknown;
        walkJson(parsed, `${where}<json>`, '');
      }
    }
    for (const [k, v] of Object.entries(obj)) walk(v, `${where}.${k}`);
  };
  (history.events ?? []).forEach((e, i) => walk(e, `event ${i + 1} (${String(e.eventType)})`));
  return { blobs, problems, payloads };
}

/** Where each needle (or a page header) occurs: `what @ where`. */
function findings(blobs: Blob[], needles: Needle[]): string[] {
  const out: string[] = [];
  for (const b of blobs) {
    for (const n of needles) if (b.bytes.includes(n.bytes)) out.push(`${n.what} @ ${b.where}`);
    if (b.bytes.includes(PAGE_HEADER)) out.push(`a guest page header @ ${b.where}`);
  }
  return out;
}

/** A secret or key in the forms it could be written in. */
function secretNeedles(what: string, raw: Buffer): Needle[] {
  return [
    { what: `${what} (hex)`, bytes: Buffer.from(raw.toString('hex')) },
    { what: `${what} (HEX)`, bytes: Buffer.from(raw.toString('hex').toUpperCase()) },
    { what: `${what} (raw)`, bytes: raw },
    { what: `${what} (base64)`, bytes: Buffer.from(raw.toString('base64').replace(/=+$/, '')) },
    { what: `${what} (base64url)`, bytes: Buffer.from(raw.toString('base64url')) },
  ];
}

/** Real pages of the guest: the prefilled region as created (version 1) and the next versions its writes give. */
function pageNeedles(memoryBytes: number, workload: string, seed: number, count: number): Needle[] {
  const guest = EmulatedGuest.create({ name: 'scan-probe', memoryBytes, workload, seed });
  const mem = guest.memory;
  const filled: number[] = [];
  for (let pfn = 0; pfn < mem.pageCount; pfn++) {
    const { words, base } = mem.pageWords(pfn);
    if (words[base] === PAGE_MAGIC && words[base + 1] === pfn) filled.push(pfn);
  }
  expect(filled.length, 'the guest has prefilled pages').toBeGreaterThan(count);
  const picks = Array.from({ length: count }, (_, i) => filled[Math.floor((i * filled.length) / count)]!);
  const needles: Needle[] = [];
  const words = new Int32Array(mem.pageSize / 4);
  for (const pfn of picks) {
    // 64 bytes of content past the 16-byte header, as the guest holds it.
    needles.push({ what: `page ${pfn} v1`, bytes: Buffer.from(mem.page(pfn).subarray(16, 80)) });
    for (const version of [2, 3]) {
      fillPage(words, 0, words.length, seed, pfn, version);
      needles.push({ what: `page ${pfn} v${version}`, bytes: Buffer.from(words.buffer, 16, 64) });
    }
  }
  return needles;
}

const historyFiles = fs.readdirSync(HISTORY_DIR).filter((f) => f.endsWith('.json'));

describe('recorded histories in test/replay/histories', () => {
  it.each(historyFiles)('%s carries no secret, no secret-named field and no guest page', (file) => {
    const history = historyFromJSON(JSON.parse(fs.readFileSync(path.join(HISTORY_DIR, file), 'utf8')));
    const { blobs, problems, payloads } = blobsOf(history);
    expect(payloads).toBeGreaterThan(0);
    expect(problems).toEqual([]);
    expect(findings(blobs, [])).toEqual([]);
  });
});

describe('a real migration between agents holding a cluster key', () => {
  const keyBytes = Buffer.from('9c1f0e8d7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d', 'hex');
  const keys = makeClusterKeys(makeClusterKey(keyBytes));
  const dir = tempDir('hist-key');
  const keyFile = path.join(dir, 'cluster.key');
  let controller: TestController;
  const agents: FerryProcess[] = [];
  const hostA = uniqueHost('hs-a');
  const hostB = uniqueHost('hs-b');
  /** An agent holding another cluster key (a rotation half done). */
  const hostC = uniqueHost('hs-c');
  const otherKey = makeClusterKey(Buffer.alloc(32, 0x5c));
  const otherKeyFile = path.join(dir, 'other.key');
  const storage = tempDir('hs-storage');

  beforeAll(async () => {
    fs.writeFileSync(keyFile, `${keyBytes.toString('hex')}\n`, { mode: 0o600 });
    fs.writeFileSync(otherKeyFile, otherKey.key.toString('hex'), { mode: 0o600 });
    const env = { FERRY_CLUSTER_KEY_FILE: keyFile };
    const [c, a, b, o] = await Promise.all([
      startTestController(),
      startAgentProcess(hostA, { storageDir: storage, memoryCapacity: '1GiB', env }),
      startAgentProcess(hostB, { storageDir: storage, memoryCapacity: '1GiB', env }),
      startAgentProcess(hostC, { storageDir: storage, memoryCapacity: '1GiB', env: { FERRY_CLUSTER_KEY_FILE: otherKeyFile } }),
    ]);
    controller = c;
    agents.push(a, b, o);
  });

  afterAll(async () => {
    await Promise.all(agents.map((a) => a.stop()));
    await controller?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the scan finds a secret, a key and a page where they are (it can fail)', () => {
    const secret = Buffer.alloc(32, 7);
    const payload = defaultPayloadConverter.toPayload({ dataAddress: '127.0.0.1:1', secret: secret.toString('hex'), page: Buffer.from('x').toString('base64') });
    const pageBytes = pageNeedles(8 * MiB, 'memcached', 5, 2);
    const carrier = defaultPayloadConverter.toPayload({ note: Buffer.concat([PAGE_HEADER, pageBytes[0]!.bytes]).toString('base64') });
    const history = { events: [{ eventId: 1, activityTaskCompletedEventAttributes: { result: { payloads: [payload, carrier] } } }] } as unknown as History;
    const { blobs, problems } = blobsOf(history);
    expect(problems.some((p) => p.includes("field 'secret'"))).toBe(true);
    const found = findings(blobs, [...secretNeedles('secret', secret), ...pageBytes]);
    expect(found.some((f) => f.startsWith('secret (hex)'))).toBe(true);
    expect(found.some((f) => f.startsWith(pageBytes[0]!.what))).toBe(true);
    expect(found.some((f) => f.startsWith('a guest page header'))).toBe(true);
  });

  it('pa-hybrid completes over channel-2, and its whole history holds no secret, no key and no guest page', async () => {
    const vm = `vm-hs-${Date.now()}`;
    const seed = 23;
    const memoryBytes = 32 * MiB;
    await createVm(controller.client, hostA, { name: vm, memoryBytes, workload: 'memcached', seed });
    const handle = await startMigration(controller.client, { vm, source: hostA, target: hostB, strategy: 'pa-hybrid' });
    const report = (await handle.result()) as MigrationReport;
    expect(report.outcome, report.reason).toBe('completed');
    expect(report.verification).toMatchObject({ ok: true, mismatches: 0 });
    // Pages went over channel-2: the handshake with the derived secret succeeded.
    expect(report.bytes.migrationNetwork).toBeGreaterThan(0);

    const history = await handle.fetchHistory();
    const { blobs, problems, payloads } = blobsOf(history);
    expect(payloads).toBeGreaterThan(20);
    expect(problems).toEqual([]);

    // The target returned a grant made with the agents' key, and the source got that grant.
    const grants: ChannelGrant[] = [];
    for (const e of history.events ?? []) {
      const result = e.activityTaskCompletedEventAttributes?.result?.payloads?.[0];
      const value = result ? (defaultPayloadConverter.fromPayload(result) as { grant?: ChannelGrant } | null) : null;
      if (value && typeof value === 'object' && value.grant) grants.push(value.grant);
    }
    expect(grants).toHaveLength(1);
    expect(grants[0]!.keyId).toBe(keys.current.id);
    const started = history.events?.find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'prepareSource');
    const input = defaultPayloadConverter.fromPayload(started!.activityTaskScheduledEventAttributes!.input!.payloads![0]!) as { migrationId: string; grant?: ChannelGrant; secret?: string };
    expect(input.grant).toEqual(grants[0]);
    expect(input.secret).toBeUndefined();
    const secret = Buffer.from(secretOfGrant(keys, 'channel-2', input.migrationId, grants[0]!), 'hex');

    const needles = [
      ...secretNeedles('channel-2 secret', secret),
      // The secret as the handshake takes it (its hex text, as UTF-8 bytes), in base64.
      { what: 'channel-2 secret (hex text, base64)', bytes: Buffer.from(Buffer.from(secret.toString('hex')).toString('base64').slice(0, 40)) },
      ...secretNeedles('cluster key', keyBytes),
      ...pageNeedles(memoryBytes, 'memcached', seed, 12),
    ];
    console.log(`history: ${history.events?.length} events, ${payloads} payloads, ${blobs.length} byte strings scanned for ${needles.length} needles`);
    expect(findings(blobs, needles)).toEqual([]);
  }, 180_000);

  it('a source holding another cluster key cannot derive the secret: rolled back with the reason, the guest running on the source, nothing secret in history', async () => {
    const vm = `vm-hs-other-${Date.now()}`;
    await createVm(controller.client, hostC, { name: vm, memoryBytes: 16 * MiB, workload: 'idle', seed: 29 });
    const handle = await startMigration(controller.client, { vm, source: hostC, target: hostB, strategy: 'precopy' });
    const report = (await handle.result()) as MigrationReport;
    expect(report.outcome).toBe('rolled-back');
    expect(report.reason).toContain(keys.current.id);
    expect(report.reason).toContain(otherKey.id);
    // Refused at once, not retried: prepareSource ran one attempt.
    const history = await handle.fetchHistory();
    const attempts = (history.events ?? []).filter((e) => {
      const id = e.activityTaskStartedEventAttributes?.scheduledEventId;
      const scheduled = id && history.events?.find((x) => String(x.eventId) === String(id));
      return scheduled && scheduled.activityTaskScheduledEventAttributes?.activityType?.name === 'prepareSource';
    });
    expect(attempts.map((e) => e.activityTaskStartedEventAttributes?.attempt)).toEqual([1]);
    const inv = (await controller.client.workflow.execute('inventoryWorkflow', { taskQueue: CONTROL_QUEUE, workflowId: `inv-${vm}`, args: [{ hosts: [hostC], timeoutMs: 10_000 }] })) as {
      hosts: { facts: { vms: { name: string; state: string }[] } }[];
    };
    expect(inv.hosts[0]!.facts.vms).toEqual(expect.arrayContaining([expect.objectContaining({ name: vm, state: 'running' })]));
    const { blobs, problems } = blobsOf(history);
    expect(problems).toEqual([]);
    expect(findings(blobs, [...secretNeedles('cluster key', keyBytes), ...secretNeedles('other key', otherKey.key)])).toEqual([]);
  }, 120_000);
});
