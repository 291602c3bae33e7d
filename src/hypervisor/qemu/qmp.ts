/**
 * A QMP client: one connection to one QEMU's monitor (a unix socket here, or a stream forwarded
 * over SSH). Commands are matched to replies by id; asynchronous events go to listeners with
 * QEMU's own timestamp. The greeting gives the version, checked against what ferry supports.
 */
import net from 'node:net';
import type { Duplex } from 'node:stream';

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  /** QEMU's timestamp of the event, ms since the epoch. */
  atMs: number;
}

export interface QemuVersion {
  major: number;
  minor: number;
  micro: number;
  package: string;
}

/** Debian 12's QEMU 7.2 loses dirty pages in multi-pass pre-copy under TCG (fixed in 9.0). */
export const MIN_QEMU_MAJOR = 9;

export class QmpError extends Error {
  override readonly name = 'QmpError';
  constructor(
    readonly command: string,
    readonly errorClass: string,
    desc: string,
  ) {
    super(`QMP ${command}: ${desc} (${errorClass})`);
  }
}

type Pending = { command: string; resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout };

export class QmpClient {
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private readonly listeners = new Set<(e: QmpEvent) => void>();
  private closedError: Error | null = null;
  private readonly closeListeners = new Set<(e: Error) => void>();
  version: QemuVersion = { major: 0, minor: 0, micro: 0, package: '' };

  private constructor(
    private readonly stream: Duplex,
    readonly where: string,
  ) {
    stream.setEncoding?.('utf8');
    stream.on('data', (chunk: string | Buffer) => this.onData(String(chunk)));
    const closed = (why: string) => {
      if (this.closedError) return;
      this.closedError = new Error(`QMP ${where}: ${why}`);
      for (const p of this.pending.values()) {
        clearTimeout(p.timer);
        p.reject(new Error(`QMP ${p.command} on ${where}: ${why}`));
      }
      this.pending.clear();
      for (const l of this.closeListeners) l(this.closedError);
    };
    stream.on('error', (e: Error) => closed(`connection error: ${e.message}`));
    stream.on('close', () => closed('connection closed (QEMU exited?)'));
    stream.on('end', () => closed('connection closed (QEMU exited?)'));
  }

  /** Connect over a unix socket path, retrying while QEMU creates it. */
  static async connectUnix(socketPath: string, timeoutMs = 10_000): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.createConnection(socketPath);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        return await QmpClient.handshake(sock, socketPath, Math.max(1000, deadline - Date.now()));
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if ((code === 'ENOENT' || code === 'ECONNREFUSED') && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 50));
          continue;
        }
        throw new Error(`QMP ${socketPath}: ${(e as Error).message}`);
      }
    }
  }

  /** Greeting, version check and qmp_capabilities on an open stream. */
  static async handshake(stream: Duplex, where: string, timeoutMs = 10_000): Promise<QmpClient> {
    const c = new QmpClient(stream, where);
    const greeting = await c.nextMessage(timeoutMs);
    const q = (greeting as { QMP?: { version?: { qemu?: { major: number; minor: number; micro: number }; package?: string } } }).QMP;
    if (!q?.version?.qemu) {
      c.close();
      throw new Error(`QMP ${where}: no QMP greeting (is this a QEMU monitor socket?)`);
    }
    c.version = { ...q.version.qemu, package: (q.version.package ?? '').trim() };
    checkVersion(c.version, where);
    await c.execute('qmp_capabilities');
    return c;
  }

  private greetingWaiter: ((m: unknown) => void) | null = null;

  private nextMessage(timeoutMs: number): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`QMP ${this.where}: no greeting within ${timeoutMs} ms`)), timeoutMs);
      this.greetingWaiter = (m) => {
        clearTimeout(timer);
        resolve(m);
      };
    });
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue; // not JSON: ignore (QMP never sends this)
      }
      this.dispatch(msg);
    }
  }

  private dispatch(msg: Record<string, unknown>): void {
    if (this.greetingWaiter && 'QMP' in msg) {
      const w = this.greetingWaiter;
      this.greetingWaiter = null;
      w(msg);
      return;
    }
    if (typeof msg.event === 'string') {
      const ts = msg.timestamp as { seconds?: number; microseconds?: number } | undefined;
      const ev: QmpEvent = {
        event: msg.event,
        data: (msg.data as Record<string, unknown>) ?? {},
        atMs: ts?.seconds !== undefined ? ts.seconds * 1000 + Math.floor((ts.microseconds ?? 0) / 1000) : Date.now(),
      };
      for (const l of this.listeners) l(ev);
      return;
    }
    const id = String(msg.id ?? '');
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if ('error' in msg) {
      const err = msg.error as { class?: string; desc?: string };
      p.reject(new QmpError(p.command, err.class ?? 'GenericError', err.desc ?? 'error'));
    } else p.resolve(msg.return);
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 30_000): Promise<T> {
    if (this.closedError) return Promise.reject(new Error(`QMP ${command} on ${this.where}: ${this.closedError.message}`));
    const id = `ferry-${this.nextId++}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`QMP ${command} on ${this.where}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.stream.write(`${JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id })}\n`);
    });
  }

  onEvent(fn: (e: QmpEvent) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  onClose(fn: (e: Error) => void): () => void {
    if (this.closedError) fn(this.closedError);
    this.closeListeners.add(fn);
    return () => this.closeListeners.delete(fn);
  }

  get closed(): boolean {
    return this.closedError !== null;
  }

  close(): void {
    this.stream.destroy();
  }
}

export function checkVersion(v: QemuVersion, where: string): void {
  if (v.major < MIN_QEMU_MAJOR) {
    throw new Error(
      `QEMU ${v.major}.${v.minor}.${v.micro} at ${where} is too old: ferry needs QEMU ≥ ${MIN_QEMU_MAJOR}.0 ` +
        `(QEMU before 9.0 can lose dirty pages in multi-pass pre-copy under TCG; on Debian 12 install qemu-system-x86 from bookworm-backports)`,
    );
  }
}

/** The RAM statistics of query-migrate that ferry uses (QEMU reports more). */
export interface MigrateInfo {
  status: string;
  totalTimeMs: number | null;
  downtimeMs: number | null;
  ram: {
    transferred: number;
    remaining: number;
    total: number;
    dirtySyncCount: number;
    pageSize: number;
    /** Pages sent whole, and zero pages sent as a marker. */
    normal: number;
    duplicate: number;
    postcopyRequests: number;
    precopyBytes: number;
    postcopyBytes: number;
    downtimeBytes: number;
    mbps: number;
  } | null;
  error: string | null;
  /**
   * Destination with the postcopy-blocktime capability: ms during which every vCPU waited
   * for a missing page at once, and each vCPU's own total wait (null: not reported).
   */
  postcopyBlocktimeMs: number | null;
  postcopyVcpuBlocktimeMs: number[] | null;
}

export function parseMigrateInfo(r: unknown): MigrateInfo {
  const o = (r ?? {}) as Record<string, unknown>;
  const ram = o.ram as Record<string, number> | undefined;
  return {
    status: typeof o.status === 'string' ? o.status : 'none',
    totalTimeMs: typeof o['total-time'] === 'number' ? (o['total-time'] as number) : null,
    downtimeMs: typeof o.downtime === 'number' ? (o.downtime as number) : null,
    ram: ram
      ? {
          transferred: ram.transferred ?? 0,
          remaining: ram.remaining ?? 0,
          total: ram.total ?? 0,
          dirtySyncCount: ram['dirty-sync-count'] ?? 0,
          pageSize: ram['page-size'] ?? 4096,
          normal: ram.normal ?? 0,
          duplicate: ram.duplicate ?? 0,
          postcopyRequests: ram['postcopy-requests'] ?? 0,
          precopyBytes: ram['precopy-bytes'] ?? 0,
          postcopyBytes: ram['postcopy-bytes'] ?? 0,
          downtimeBytes: ram['downtime-bytes'] ?? 0,
          mbps: ram.mbps ?? 0,
        }
      : null,
    error: typeof o['error-desc'] === 'string' ? (o['error-desc'] as string) : null,
    postcopyBlocktimeMs: typeof o['postcopy-blocktime'] === 'number' ? (o['postcopy-blocktime'] as number) : null,
    postcopyVcpuBlocktimeMs: Array.isArray(o['postcopy-vcpu-blocktime']) ? (o['postcopy-vcpu-blocktime'] as unknown[]).filter((x): x is number => typeof x === 'number') : null,
  };
}
