import fs from 'node:fs';
import os from 'node:os';
import { UsageError } from '../../common/errors';
import { loadClusterKeys, requireClusterKeys } from '../../common/cluster-key';
import { HOST_ID_RE } from '../../common/names';
import { parseDuration, parseSize } from '../../common/units';
import { MIN_STALL_MS, storeSettingsFromEnv } from '../../dataplane/store-io';
import path from 'node:path';
import { setTraceDir } from '../../guest/workloads';
import { startAgent, type QemuAgentOptions } from '../../workers/agent';
import { checkOwnIdentity, checkSignedByCa, loadChannelTls, TlsConfigError, type ChannelTlsFiles } from '../../dataplane/tls';
import { ensureTestGuest } from '../../hypervisor/qemu/guest-image';
import type { SshTarget } from '../../hypervisor/qemu/ssh';
import { onShutdownSignal } from '../../workers/runtime';
import { choice, parse, str } from '../args';
import { commonOptions, configFrom, say, temporalAddressOf } from '../context';

export const help =
  'ferry agent --host <id> [--driver emulated|qemu] [--data-addr HOST:PORT] [--storage DIR] [--memory-capacity SIZE] [--metrics HOST:PORT] ' +
  '[--qemu-state DIR] [--migration-addr IP] [--fallback-addr IP] [--guest-kernel F --guest-initrd F] [--ssh USER@HOST[:PORT] --ssh-key F --known-hosts F] ' +
  '[--tls-ca F --tls-cert F --tls-key F] [--trace-dir DIR] [--storage-stall T] [--storage-encryption] [--insecure-no-cluster-key]   run a host agent ' +
  '(trace:<file> workloads are read only from --trace-dir; --storage-stall: a storage operation that moves no byte this long is abandoned, default 5s; ' +
  '--storage-encryption: seal StaticData and PbData with the cluster key)';

const IP_RE = /^(\d{1,3}(\.\d{1,3}){3}|[0-9a-fA-F:]+)$/;

/**
 * --tls-ca, --tls-cert, --tls-key: mutual TLS on channel-2 (and, with --driver qemu, on
 * QEMU's migration stream), all three or none; checked here.
 */
function tlsOptions(values: Record<string, unknown>, hostId: string, driver: 'emulated' | 'qemu'): ChannelTlsFiles | undefined {
  const ca = str(values['tls-ca']);
  const cert = str(values['tls-cert']);
  const key = str(values['tls-key']);
  if (ca === undefined && cert === undefined && key === undefined) return undefined;
  if (ca === undefined || cert === undefined || key === undefined) {
    const missing = [ca === undefined && '--tls-ca', cert === undefined && '--tls-cert', key === undefined && '--tls-key'].filter(Boolean).join(', ');
    throw new UsageError(`--tls-ca, --tls-cert and --tls-key go together (missing ${missing})`);
  }
  const files = { ca, cert, key };
  try {
    const loaded = loadChannelTls(files);
    checkOwnIdentity(loaded, hostId);
    if (driver === 'qemu') checkSignedByCa(loaded);
  } catch (err) {
    if (err instanceof TlsConfigError) throw new UsageError(err.message);
    throw err;
  }
  return files;
}

/** --driver qemu: where QEMU runs, its guest image, and the two networks' addresses. */
async function qemuOptions(values: Record<string, unknown>, hostId: string, dataAddr: string): Promise<QemuAgentOptions> {
  const migrationAddress = str(values['migration-addr']) ?? dataAddr.slice(0, dataAddr.lastIndexOf(':'));
  if (!IP_RE.test(migrationAddress)) throw new UsageError(`--migration-addr: '${migrationAddress}' is not an IP address`);
  const fallback = str(values['fallback-addr']) ?? null;
  if (fallback !== null && !IP_RE.test(fallback)) throw new UsageError(`--fallback-addr: '${fallback}' is not an IP address`);
  const kernel = str(values['guest-kernel']);
  const initrd = str(values['guest-initrd']);
  if ((kernel === undefined) !== (initrd === undefined)) throw new UsageError('--guest-kernel and --guest-initrd go together');
  let ssh: SshTarget | undefined;
  const sshSpec = str(values.ssh);
  if (sshSpec) {
    const m = /^([^@\s]+)@([^:\s]+)(?::(\d{1,5}))?$/.exec(sshSpec);
    if (!m) throw new UsageError(`--ssh: '${sshSpec}' is not USER@HOST[:PORT]`);
    const key = str(values['ssh-key']);
    const knownHosts = str(values['known-hosts']);
    if (!key) throw new UsageError('--ssh needs --ssh-key (a private key file)');
    if (!knownHosts) throw new UsageError('--ssh needs --known-hosts: host keys are verified, never accepted blindly');
    ssh = { username: m[1]!, host: m[2]!, port: m[3] ? Number(m[3]) : 22, privateKeyPath: key, knownHostsPath: knownHosts };
  }
  // Without an image, build (once) the test guest from Debian packages.
  const image = kernel && initrd ? { kernel, initrd } : await ensureTestGuest({ log: say });
  return {
    stateDir: str(values['qemu-state']) ?? path.join(os.tmpdir(), 'ferry-qemu', hostId),
    image: { kernel: image.kernel, initrd: image.initrd },
    migrationAddress,
    fallbackAddress: fallback,
    ...(ssh ? { ssh } : {}),
  };
}

/**
 * --storage-stall and --storage-encryption: the flags of FERRY_STORAGE_STALL_MS and
 * FERRY_STORAGE_ENCRYPTION (which the store reads; a flag wins over the environment). Checked
 * here, with the cluster key encryption needs, so a bad setting stops the agent at start, not
 * at its first migration.
 */
function storageFlags(values: Record<string, unknown>): void {
  const stall = str(values['storage-stall']);
  if (stall !== undefined) {
    const ms = parseDuration(stall, '--storage-stall');
    if (ms < MIN_STALL_MS) throw new UsageError(`--storage-stall: '${stall}' is below ${MIN_STALL_MS}ms`);
    process.env.FERRY_STORAGE_STALL_MS = String(ms);
  }
  if (values['storage-encryption'] === true) {
    requireClusterKeys(process.env, '--storage-encryption:');
    process.env.FERRY_STORAGE_ENCRYPTION = '1';
  }
  // The environment's own settings too: a bad one stops the agent here.
  storeSettingsFromEnv(process.env);
}

/**
 * Without a cluster key a target hands out a random channel-2 secret that travels in the
 * workflow history, where whoever reads the namespace could feed pages to the target. The
 * agent does not start that way unless the operator says so.
 */
function requireKeyOrConsent(values: Record<string, unknown>): void {
  if (loadClusterKeys(process.env) || values['insecure-no-cluster-key'] === true) return;
  throw new UsageError(
    'no cluster key: set FERRY_CLUSTER_KEY_FILE to the same 32-byte key file on every agent (e.g. `openssl rand -hex 32 > cluster.key && chmod 600 cluster.key`), ' +
      "or pass --insecure-no-cluster-key to let each migration's channel-2 secret travel in the workflow history",
  );
}

export async function run(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      ...commonOptions,
      host: { type: 'string' },
      driver: { type: 'string' },
      'data-addr': { type: 'string' },
      'data-advertise': { type: 'string' },
      storage: { type: 'string' },
      'memory-capacity': { type: 'string' },
      metrics: { type: 'string' },
      'qemu-state': { type: 'string' },
      'migration-addr': { type: 'string' },
      'fallback-addr': { type: 'string' },
      'guest-kernel': { type: 'string' },
      'guest-initrd': { type: 'string' },
      ssh: { type: 'string' },
      'ssh-key': { type: 'string' },
      'known-hosts': { type: 'string' },
      'tls-ca': { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'trace-dir': { type: 'string' },
      'storage-stall': { type: 'string' },
      'storage-encryption': { type: 'boolean' },
      'insecure-no-cluster-key': { type: 'boolean' },
    },
    false,
  );
  const cfg = configFrom(values);
  const hostId = str(values.host);
  if (!hostId) throw new UsageError('--host: required (the id of this host, e.g. host-a)');
  if (!HOST_ID_RE.test(hostId)) throw new UsageError(`--host: '${hostId}' is not a valid host id (letters, digits, . _ -)`);
  const driver = choice(values.driver, 'driver', ['emulated', 'qemu'] as const) ?? 'emulated';
  const dataAddr = str(values['data-addr']) ?? '127.0.0.1:0';
  if (!/^[^\s:]+:\d{1,5}$/.test(dataAddr)) throw new UsageError(`--data-addr: '${dataAddr}' is not HOST:PORT`);
  const tls = tlsOptions(values, hostId, driver);
  if (cfg.traceDir !== null) {
    let ok = false;
    try {
      ok = fs.statSync(cfg.traceDir).isDirectory();
    } catch {
      // reported below
    }
    if (!ok) throw new UsageError(`--trace-dir / FERRY_TRACE_DIR: '${cfg.traceDir}' is not a directory`);
  }
  setTraceDir(cfg.traceDir);
  storageFlags(values);
  requireKeyOrConsent(values);
  const capacity = values['memory-capacity'] ? parseSize(String(values['memory-capacity']), '--memory-capacity') : Math.floor(os.totalmem() / 2);
  const agent = await startAgent({
    hostId,
    temporalAddress: temporalAddressOf(cfg),
    temporalTls: cfg.temporalTls ?? null,
    namespace: cfg.namespace,
    driver,
    dataAddr,
    dataAdvertise: str(values['data-advertise']),
    storageDir: cfg.storageDir,
    memoryCapacityBytes: capacity,
    metricsAddr: str(values.metrics),
    metricsToken: cfg.metricsToken,
    ...(tls ? { tls } : {}),
    ...(driver === 'qemu' ? { qemu: await qemuOptions(values, hostId, dataAddr) } : {}),
  });
  onShutdownSignal((sig) => {
    say(`ferry agent ${hostId}: ${sig}, shutting down`);
    void agent.shutdown();
  });
  await agent.done;
  say(`ferry agent ${hostId}: stopped`);
  return 0;
}
