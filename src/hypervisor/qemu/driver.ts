/**
 * The QEMU driver: the agent launches and owns QEMU processes (one state directory per VM
 * with the QMP socket, pidfile and serial log), or attaches to one it finds there after a
 * restart. QEMU runs daemonized, so a guest outlives an agent restart, as under libvirt.
 * The host is this machine or a remote one over SSH (./host.ts).
 *
 * Test guests (./guest-image.ts) run a workload that dirties memory and verifies its own
 * pages; the driver reads its verdicts from the serial log.
 */
import type { GrowthSample } from './dirty-sampler';
import fs from 'node:fs';
import path from 'node:path';
import type { HypervisorDriver, VmInfo, VmSpec, VmState } from '../driver';
import type { QemuHost } from './host';
import { qemuGuestArgs, parseSerial, type SerialState } from './guest-image';
import { ramFilePath, ShmReservations } from './ram-files';
import { parseMigrateInfo, type MigrateInfo, type QmpClient, type QmpEvent } from './qmp';

export interface QemuDriverOptions {
  hostId: string;
  host: QemuHost;
  /** Directory (on the QEMU host) for per-VM sockets, pidfiles and serial logs. */
  stateDir: string;
  /** The test guest's kernel and initramfs (on the QEMU host). */
  image: { kernel: string; initrd: string };
  /** The QEMU binary on the QEMU host. */
  qemuBinary?: string;
  /**
   * The agent's cluster TLS material (PEM): when set, every migration stream of this host's
   * QEMUs runs over mutual TLS (QEMU's tls-creds-x509, both ends verifying the peer).
   */
  migrationTls?: { ca: string; cert: string; key: string };
  log?: (l: string) => void;
}

/** QOM ids of the credentials ferry adds to a QEMU: one per role it plays in a migration. */
export const TLS_CREDS_ID = { server: 'ferry-tls-server', client: 'ferry-tls-client' } as const;

/** What a workload name means for the test guest: working set and dirtying rate. */
export interface GuestWorkload {
  wssMiB: number;
  /** pages/s; 0 = as fast as the vCPU goes. */
  rate: number;
  /** The written window grows at this speed (KiB/s) from wss0MiB; 0 = the whole set from the start. */
  growKiBps?: number;
  wss0MiB?: number;
}

export const QEMU_WORKLOADS: Record<string, (memMiB: number) => GuestWorkload> = {
  /** A quarter of memory, 8 MiB/s: pre-copy converges. */
  converging: (m) => ({ wssMiB: Math.max(8, Math.floor(m / 4)), rate: 2048 }),
  /**
   * A cache warming up: a window written as fast as the vCPU goes, growing by 1/64 of memory
   * per second from 1/16 up to 1/2. Its dirty set grows from each pass to the next
   * (λ ≈ 1 + growth / bandwidth > 1) until the window is full.
   */
  'write-intensive': (m) => ({ wssMiB: Math.max(8, Math.floor(m / 2)), rate: 0, growKiBps: Math.max(64, m * 16), wss0MiB: Math.max(1, Math.floor(m / 16)) }),
  /** Half of memory rewritten as fast as the vCPU goes: pre-copy never converges, λ stays ≈ 1. */
  'hot-set': (m) => ({ wssMiB: Math.max(8, Math.floor(m / 2)), rate: 0 }),
  /** A small working set, rarely written. */
  idle: (m) => ({ wssMiB: Math.min(16, Math.max(4, Math.floor(m / 8))), rate: 16 }),
};

export function resolveWorkload(spec: Pick<VmSpec, 'workload' | 'memoryBytes' | 'rate'>): GuestWorkload {
  const f = QEMU_WORKLOADS[spec.workload];
  if (!f) throw new Error(`unknown QEMU workload '${spec.workload}' (known: ${Object.keys(QEMU_WORKLOADS).join(', ')})`);
  const w = f(Math.floor(spec.memoryBytes / 2 ** 20));
  return spec.rate ? { ...w, rate: spec.rate } : w;
}

/** Per-pass statistics, captured when QEMU emits MIGRATION_PASS (the dirty bitmap sync). */
export interface PassSample {
  pass: number;
  atMs: number;
  info: MigrateInfo;
}

export interface QemuVm {
  spec: VmSpec;
  dir: string;
  qmpPath: string;
  serialPath: string;
  pidPath: string;
  qmp: QmpClient;
  state: VmState;
  incoming: boolean;
  /** MIGRATION status events as they came, with QEMU's timestamps. */
  statuses: { status: string; atMs: number }[];
  passes: PassSample[];
  /** The dirty set's growth, measured while pre-copy runs (dirty-sampler.ts); the latest few hundred windows. */
  growth: GrowthSample[];
  /** Wakes whoever waits for a pass or a status. */
  waiters: Set<() => void>;
  /** QEMU's timestamps of the last STOP and RESUME events (the guest paused / ran again). */
  lastStopAtMs: number | null;
  lastResumeAtMs: number | null;
  /**
   * An incoming guest's RAM (block RAM_FILE_BLOCK) as a file on tmpfs, shared with QEMU: the agent's
   * relay writes StaticData pages straight into it (target-relay.ts). Null: anonymous RAM.
   */
  ramFile: string | null;
}

export class QemuDriver implements HypervisorDriver {
  readonly kind = 'qemu' as const;
  private readonly vms = new Map<string, QemuVm>();
  private readonly qemu: string;
  private readonly shm = new ShmReservations();

  constructor(readonly opts: QemuDriverOptions) {
    this.qemu = opts.qemuBinary ?? 'qemu-system-x86_64';
  }

  /** Re-attach to the QEMU processes a previous agent left running in the state directory. */
  async adopt(): Promise<string[]> {
    const r = await this.opts.host.run(['sh', '-c', `ls -1 ${JSON.stringify(this.opts.stateDir)} 2>/dev/null || true`]);
    const adopted: string[] = [];
    for (const name of r.stdout.split('\n').map((s) => s.trim()).filter(Boolean)) {
      const dir = path.posix.join(this.opts.stateDir, name);
      const specText = await this.opts.host.readFile(path.posix.join(dir, 'spec.json'));
      if (!specText) continue;
      try {
        const spec = JSON.parse(specText) as VmSpec;
        const ramFile = this.opts.host.where === 'local' && fs.existsSync(ramFilePath(dir)) ? ramFilePath(dir) : null;
        await this.attach(spec, dir, 2000, false, ramFile);
        adopted.push(name);
      } catch {
        // not running any more: leave the directory for inspection
      }
    }
    return adopted;
  }

  private async attach(spec: VmSpec, dir: string, timeoutMs: number, incoming = false, ramFile: string | null = null): Promise<QemuVm> {
    const qmpPath = path.posix.join(dir, 'qmp.sock');
    const qmp = await this.opts.host.openQmp(qmpPath, timeoutMs);
    const vm: QemuVm = {
      spec,
      dir,
      qmpPath,
      serialPath: path.posix.join(dir, 'serial.log'),
      pidPath: path.posix.join(dir, 'qemu.pid'),
      qmp,
      state: incoming ? 'incoming' : 'running',
      incoming,
      statuses: [],
      passes: [],
      growth: [],
      waiters: new Set(),
      lastStopAtMs: null,
      lastResumeAtMs: null,
      ramFile,
    };
    const status = (await qmp.execute<{ status: string; running: boolean }>('query-status')).status;
    vm.state = status === 'inmigrate' ? 'incoming' : status === 'running' ? 'running' : status === 'postmigrate' ? 'stopped' : 'paused';
    qmp.onEvent((e) => this.onEvent(vm, e));
    qmp.onClose(() => {
      if (this.vms.get(spec.name) === vm) this.vms.delete(spec.name);
      wake(vm);
    });
    this.vms.set(spec.name, vm);
    return vm;
  }

  private onEvent(vm: QemuVm, e: QmpEvent): void {
    if (e.event === 'MIGRATION') {
      const status = String(e.data.status);
      vm.statuses.push({ status, atMs: e.atMs });
      if (status === 'completed' && vm.incoming) vm.incoming = false;
    } else if (e.event === 'MIGRATION_PASS') {
      // The bitmap sync just happened: take the statistics now, at the pass boundary.
      const pass = Number(e.data.pass);
      vm.qmp
        .execute('query-migrate')
        .then((r) => {
          vm.passes.push({ pass, atMs: e.atMs, info: parseMigrateInfo(r) });
          wake(vm);
        })
        .catch(() => undefined);
      return;
    } else if (e.event === 'STOP') {
      vm.lastStopAtMs = e.atMs;
      if (vm.state === 'running') vm.state = 'paused';
    } else if (e.event === 'RESUME') {
      vm.lastResumeAtMs = e.atMs;
      vm.state = 'running';
      vm.incoming = false;
    } else if (e.event === 'SHUTDOWN') {
      vm.state = 'stopped';
    }
    wake(vm);
  }

  checkWorkload(workload: string): string | null {
    return QEMU_WORKLOADS[workload] ? null : `QEMU host ${this.opts.hostId} runs the test guest's workloads ${Object.keys(QEMU_WORKLOADS).join(', ')}, not '${workload}'`;
  }

  vm(name: string): QemuVm | null {
    return this.vms.get(name) ?? null;
  }

  private info(v: QemuVm): VmInfo {
    return { ...v.spec, state: v.incoming ? 'incoming' : v.state, driver: 'qemu' };
  }

  listVms(): VmInfo[] {
    return [...this.vms.values()].map((v) => this.info(v));
  }

  describe(name: string): VmInfo | null {
    const v = this.vms.get(name);
    return v ? this.info(v) : null;
  }

  allocatedBytes(): number {
    let n = 0;
    for (const v of this.vms.values()) n += v.spec.memoryBytes;
    return n;
  }

  private guestArgs(spec: VmSpec, serialLog: string, ramFile: string | null): string[] {
    if (spec.qemuArgs) return [...spec.qemuArgs, '-serial', `file:${serialLog}`];
    const w = resolveWorkload(spec);
    return qemuGuestArgs(this.opts.image, {
        ...(ramFile ? { ramFile } : {}),
        memoryMiB: Math.floor(spec.memoryBytes / 2 ** 20),
        wss: w.wssMiB,
        rate: w.rate,
        verifyMs: 1000,
        seed: spec.seed,
        serialLog,
        ...(w.growKiBps ? { growKiBps: w.growKiBps, wss0: w.wss0MiB } : {}),
      });
  }

  private async launch(spec: VmSpec, incoming: boolean): Promise<QemuVm> {
    if (this.vms.has(spec.name)) throw new Error(`VM ${spec.name} already exists on ${this.opts.hostId}`);
    const dir = path.posix.join(this.opts.stateDir, spec.name);
    await this.opts.host.remove(dir);
    await this.opts.host.mkdirp(dir);
    const serialLog = path.posix.join(dir, 'serial.log');
    // An incoming guest ferry launches on this machine keeps its RAM in a tmpfs file, so that
    // par-migrate's merge writes StaticData pages into it directly instead of through QEMU's stream.
    const ramFile = incoming && !spec.qemuArgs && this.opts.host.where === 'local' && this.reserveShm(spec.memoryBytes) ? ramFilePath(dir) : null;
    try {
      if (ramFile) fs.rmSync(ramFile, { force: true });
      return await this.start(spec, dir, serialLog, incoming, ramFile);
    } catch (e) {
      if (ramFile) fs.rmSync(ramFile, { force: true });
      throw e;
    } finally {
      if (ramFile) this.shm.release(spec.memoryBytes);
    }
  }

  /** Room on tmpfs for one more RAM file, beside this agent's guests' files; reserved if so. */
  private reserveShm(bytes: number): boolean {
    const files = [...this.vms.values()].flatMap((v) => (v.ramFile ? [{ path: v.ramFile, bytes: v.spec.memoryBytes }] : []));
    return this.shm.reserve(bytes, files);
  }

  private async start(spec: VmSpec, dir: string, serialLog: string, incoming: boolean, ramFile: string | null): Promise<QemuVm> {
    const argv = [
      this.qemu,
      '-name',
      spec.name,
      ...this.guestArgs(spec, serialLog, ramFile),
      '-qmp',
      `unix:${path.posix.join(dir, 'qmp.sock')},server=on,wait=off`,
      '-pidfile',
      path.posix.join(dir, 'qemu.pid'),
      '-daemonize',
      ...(incoming ? ['-incoming', 'defer'] : []),
    ];
    // The spec goes first: a QEMU that is running is always adoptable after an agent restart.
    await this.writeSpec(dir, spec);
    const r = await this.opts.host.run(argv);
    if (r.code !== 0) throw new Error(`${this.opts.host.where}: ${this.qemu} failed to start ${spec.name}: ${r.stderr.trim() || `exit ${r.code}`}`);
    return this.attach(spec, dir, 15_000, incoming, ramFile);
  }

  private async writeSpec(dir: string, spec: VmSpec): Promise<void> {
    const specFile = path.posix.join(dir, 'spec.json');
    const r = await this.opts.host.run(['sh', '-c', `cat > "$1" <<'FERRY_SPEC_EOF'\n${JSON.stringify(spec)}\nFERRY_SPEC_EOF`, 'write-spec', specFile]);
    if (r.code !== 0) throw new Error(`${this.opts.host.where}: cannot write ${specFile}: ${r.stderr.trim()}`);
  }

  /** Launch a guest and return once its workload runs (it says so on serial). */
  async createVm(spec: VmSpec, readyTimeoutMs = 120_000): Promise<VmInfo> {
    const vm = await this.launch(spec, false);
    const deadline = Date.now() + readyTimeoutMs;
    for (;;) {
      const serial = parseSerial(await this.opts.host.readFile(vm.serialPath));
      if (serial.ready) break;
      if (serial.exited || vm.qmp.closed || Date.now() > deadline) {
        const why = serial.exited ? 'its workload exited' : vm.qmp.closed ? 'QEMU exited' : `its workload was not ready within ${readyTimeoutMs} ms`;
        await this.destroyVm(spec.name).catch(() => undefined);
        throw new Error(`guest ${spec.name} on ${this.opts.hostId} did not start: ${why} (see ${vm.serialPath})`);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    return this.info(vm);
  }

  /**
   * Take over a QEMU that ferry did not launch, by its QMP socket (`-qmp unix:PATH` on its
   * command line). Its command line, read from /proc, is what the target of a migration
   * runs (less the monitor, pidfile, serial and daemonize options). Its state directory
   * links to the socket and serial log, so an agent restart re-attaches it like any other.
   */
  async attachExisting(name: string, qmpPath: string, serialPath: string | null): Promise<VmInfo> {
    if (this.vms.has(name)) throw new Error(`VM ${name} already exists on ${this.opts.hostId}`);
    const probe = await this.opts.host.openQmp(qmpPath, 5000);
    let memoryBytes = 0;
    let vcpus = 1;
    try {
      memoryBytes = (await probe.execute<{ 'base-memory': number }>('query-memory-size-summary'))['base-memory'];
      vcpus = (await probe.execute<unknown[]>('query-cpus-fast')).length || 1;
    } finally {
      probe.close();
    }
    const find = await this.opts.host.run([
      'sh',
      '-c',
      `for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/cmdline 2>/dev/null | grep -qxF -- "unix:$1,server=on,wait=off" && { echo "\${p#/proc/}"; tr '\\0' '\\n' < $p/cmdline; exit 0; }; tr '\\0' '\\n' < $p/cmdline 2>/dev/null | grep -qE -- "^unix:$1(,|$)" && { echo "\${p#/proc/}"; tr '\\0' '\\n' < $p/cmdline; exit 0; }; done; exit 1`,
      'find-qemu',
      qmpPath,
    ]);
    if (find.code !== 0) throw new Error(`no QEMU on ${this.opts.host.where} has -qmp unix:${qmpPath} on its command line (ferry attaches QEMUs whose QMP socket is given with -qmp)`);
    const [pid, ...argv] = find.stdout.split('\n').filter((l) => l !== '');
    const qemuArgs = stripOwnOptions(argv.slice(1));
    const spec: VmSpec = { name, memoryBytes, vcpus, workload: 'external', seed: 0, qemuArgs };
    const dir = path.posix.join(this.opts.stateDir, name);
    await this.opts.host.remove(dir);
    await this.opts.host.mkdirp(dir);
    await this.opts.host.run(['ln', '-sfn', qmpPath, path.posix.join(dir, 'qmp.sock')]);
    if (serialPath) await this.opts.host.run(['ln', '-sfn', serialPath, path.posix.join(dir, 'serial.log')]);
    await this.opts.host.run(['sh', '-c', 'echo "$1" > "$2"', 'pid', String(pid), path.posix.join(dir, 'qemu.pid')]);
    await this.writeSpec(dir, spec);
    return this.info(await this.attach(spec, dir, 5000));
  }

  /** Whether this host's migration streams run over mutual TLS. */
  get migrationTls(): boolean {
    return this.opts.migrationTls !== undefined;
  }

  private tlsDir: Promise<string> | undefined;
  /**
   * The directory QEMU's tls-creds-x509 reads, on the QEMU host: the cluster CA and this
   * host's certificate and key under the names QEMU expects for either role
   * (ca-cert.pem, server-cert.pem/-key.pem, client-cert.pem/-key.pem). Written once per
   * agent process, so a rotated certificate takes effect when the agent restarts. A dot
   * name, so adopt() never mistakes it for a VM.
   */
  private migrationTlsDir(): Promise<string> {
    const t = this.opts.migrationTls;
    if (!t) return Promise.reject(new Error('no migration TLS configured'));
    this.tlsDir ??= (async () => {
      const dir = path.posix.join(this.opts.stateDir, '.tls');
      await this.opts.host.mkdirp(dir);
      await this.opts.host.run(['chmod', '700', dir]);
      const files: [string, string][] = [
        ['ca-cert.pem', t.ca],
        ['server-cert.pem', t.cert],
        ['server-key.pem', t.key],
        ['client-cert.pem', t.cert],
        ['client-key.pem', t.key],
      ];
      for (const [name, content] of files) await this.opts.host.writePrivateFile(path.posix.join(dir, name), content);
      return dir;
    })().catch((e: unknown) => {
      this.tlsDir = undefined;
      throw e;
    });
    return this.tlsDir;
  }

  /**
   * Give a QEMU the credentials for its role and return their id, or null when this host
   * runs without TLS. A QEMU that still holds ferry credentials from an earlier migration
   * (adopted, attached, or migrated in and now migrating out) gets fresh ones.
   */
  async addMigrationTls(v: QemuVm, role: 'server' | 'client'): Promise<string | null> {
    if (!this.opts.migrationTls) return null;
    const dir = await this.migrationTlsDir();
    const id = TLS_CREDS_ID[role];
    // A server verifies the client's certificate too (mutual TLS); a client always does.
    await this.replaceObject(v, id, { 'qom-type': 'tls-creds-x509', dir, endpoint: role, 'verify-peer': true });
    return id;
  }

  /** object-add, first removing an object of that id an earlier migration left in this QEMU. */
  async replaceObject(v: QemuVm, id: string, props: Record<string, unknown> & { 'qom-type': string }): Promise<void> {
    const objects = await v.qmp.execute<{ name: string }[]>('qom-list', { path: '/objects' });
    if (objects.some((o) => o.name === id)) await v.qmp.execute('object-del', { id });
    await v.qmp.execute('object-add', { ...props, id });
  }

  /** Target side: a QEMU waiting for an incoming migration (`-incoming defer`). */
  async launchIncoming(spec: VmSpec): Promise<QemuVm> {
    const existing = this.vms.get(spec.name);
    if (existing?.incoming) return existing;
    return this.launch(spec, true);
  }

  async destroyVm(name: string): Promise<void> {
    const v = this.vms.get(name);
    if (v) {
      this.vms.delete(name);
      await v.qmp.execute('quit', undefined, 5000).catch(() => undefined);
      v.qmp.close();
    }
    await this.removeLeftovers(name);
  }

  /** Kill the QEMU of a VM directory (if its pidfile names one) and remove the directory. */
  async removeLeftovers(name: string): Promise<void> {
    const dir = path.posix.join(this.opts.stateDir, name);
    const pidFile = path.posix.join(dir, 'qemu.pid');
    await this.opts.host.run(['sh', '-c', 'p=$(cat "$1" 2>/dev/null) && kill -9 "$p" 2>/dev/null; rm -f "$2"; true', 'kill-qemu', pidFile, ramFilePath(dir)]);
    await this.opts.host.remove(dir);
  }

  async readSerial(name: string): Promise<SerialState> {
    const v = this.vms.get(name);
    if (!v) throw new Error(`no VM ${name} on ${this.opts.hostId}`);
    return parseSerial(await this.opts.host.readFile(v.serialPath));
  }

  /** Wait until `ready()` holds for this VM (events wake the check), or time out. */
  async waitFor<T>(name: string, ready: (vm: QemuVm) => T | null | undefined, timeoutMs: number, onTick?: () => void): Promise<T | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const vm = this.vms.get(name);
      if (!vm) throw new Error(`QEMU of ${name} on ${this.opts.hostId} is gone`);
      const r = ready(vm);
      if (r !== null && r !== undefined) return r;
      const left = deadline - Date.now();
      if (left <= 0) return null;
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, Math.min(left, 1000));
        function done() {
          clearTimeout(t);
          vm!.waiters.delete(done);
          resolve();
        }
        vm.waiters.add(done);
      });
      onTick?.();
    }
  }

  async close(): Promise<void> {
    // QEMU processes outlive the agent on purpose; only the monitor connections close.
    for (const v of this.vms.values()) v.qmp.close();
    this.vms.clear();
  }
}

function wake(vm: QemuVm): void {
  for (const w of [...vm.waiters]) w();
}

/** Options ferry sets itself on every QEMU it launches: dropped from an attached command line. */
const OWN_OPTIONS = new Set(['-qmp', '-pidfile', '-serial', '-incoming', '-name', '-monitor']);

export function stripOwnOptions(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '-daemonize' || a === '-S') continue;
    if (OWN_OPTIONS.has(a)) {
      i++; // and its value
      continue;
    }
    out.push(a);
  }
  return out;
}

/**
 * Kill every QEMU whose pidfile lies in a per-VM directory under `stateDir` (this machine),
 * and remove the directory: QEMU runs daemonized, so demos, benches and tests that own a
 * state directory clean up with this.
 */
export function killQemusUnder(stateDir: string): void {
  if (!fs.existsSync(stateDir)) return;
  for (const vm of fs.readdirSync(stateDir)) {
    try {
      const pid = Number(fs.readFileSync(path.join(stateDir, vm, 'qemu.pid'), 'utf8').trim());
      if (pid > 1) process.kill(pid, 'SIGKILL');
    } catch {
      // no pidfile, or gone already
    }
    fs.rmSync(ramFilePath(path.join(stateDir, vm)), { force: true });
  }
  fs.rmSync(stateDir, { recursive: true, force: true });
}
