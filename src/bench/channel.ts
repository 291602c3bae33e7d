/**
 * Channel-2 loopback benchmark.
 *
 *   npx tsx src/bench/channel.ts [--json] [--seconds 3] [--mib 64] [--cap-mib 32] [--in-process]
 *
 * The target (PageChannelServer + an in-memory sink) runs in a child process so sender and
 * receiver each get a core, as on two hosts. Measures:
 *   - uncapped throughput in page-payload bytes/s (random pages, then half zero pages);
 *   - accuracy of a capped transfer (default 32 MiB/s, a few seconds): wire bytes/s vs cap.
 * Every run ends with a barrier and a checksum comparison of source and sink.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes, randomFillSync } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { crc32 } from 'node:zlib';
import { PageChannel, PageChannelServer } from '../dataplane/channel';
import type { PageSink, PageSource } from '../dataplane/pages';

const PS = 4096;
const MiB = 1024 * 1024;

class Mem implements PageSource, PageSink {
  readonly mem: Buffer;
  readonly pageSize = PS;
  constructor(readonly pageCount: number) {
    this.mem = Buffer.alloc(pageCount * PS);
  }
  readPage(pfn: number, dst: Uint8Array): void {
    dst.set(this.mem.subarray(pfn * PS, (pfn + 1) * PS));
  }
  writePage(pfn: number, src: Uint8Array): void {
    this.mem.set(src, pfn * PS);
  }
}

interface Args {
  json: boolean;
  seconds: number;
  mib: number;
  capMib: number;
  inProcess: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { json: false, seconds: 3, mib: 64, capMib: 32, inProcess: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = Number(argv[i + 1]);
    if (k === '--json') a.json = true;
    else if (k === '--in-process') a.inProcess = true;
    else if (k === '--seconds') (a.seconds = v), i++;
    else if (k === '--mib') (a.mib = v), i++;
    else if (k === '--cap-mib') (a.capMib = v), i++;
  }
  return a;
}

// ---- target side ---------------------------------------------------------------------

type ToTarget = { op: 'expect'; migrationId: string; secret: string; pageCount: number } | { op: 'checksum'; migrationId: string } | { op: 'cpu' } | { op: 'exit' };
type FromTarget = { op: 'listening'; port: number } | { op: 'expected' } | { op: 'checksum'; crc: number } | { op: 'cpu'; micros: number };

/** The target in this process or in a child; same messages either way. */
interface Target {
  port: number;
  send(msg: ToTarget): Promise<FromTarget | undefined>;
  stop(): Promise<void>;
}

function targetLogic(): { handle(msg: ToTarget): Promise<FromTarget | undefined>; listen(): Promise<number>; stop(): Promise<void> } {
  let server: PageChannelServer | undefined;
  const sinks = new Map<string, Mem>();
  return {
    async listen() {
      server = await PageChannelServer.listen({ host: '127.0.0.1', port: 0 });
      return server.address.port;
    },
    async handle(msg) {
      if (!server) throw new Error('not listening');
      if (msg.op === 'expect') {
        const sink = new Mem(msg.pageCount);
        sinks.set(msg.migrationId, sink);
        server.expect({ migrationId: msg.migrationId, secret: msg.secret, handlers: { sink } });
        return { op: 'expected' };
      }
      if (msg.op === 'cpu') {
        const u = process.cpuUsage();
        return { op: 'cpu', micros: u.user + u.system };
      }
      if (msg.op === 'checksum') {
        return { op: 'checksum', crc: crc32((sinks.get(msg.migrationId) as Mem).mem) };
      }
      return undefined;
    },
    async stop() {
      await server?.close();
    },
  };
}

async function childMain(): Promise<void> {
  const logic = targetLogic();
  const port = await logic.listen();
  const send = (m: FromTarget): void => void process.send?.(m);
  process.on('message', (msg: ToTarget) => {
    if (msg.op === 'exit') {
      void logic.stop().then(() => process.exit(0));
      return;
    }
    void logic.handle(msg).then((r) => r && send(r));
  });
  send({ op: 'listening', port });
}

async function startTarget(inProcess: boolean): Promise<Target> {
  if (inProcess) {
    const logic = targetLogic();
    const port = await logic.listen();
    return { port, send: (m) => logic.handle(m), stop: () => logic.stop() };
  }
  const child: ChildProcess = fork(fileURLToPath(import.meta.url), ['--serve'], { execArgv: process.execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const waiting: ((m: FromTarget) => void)[] = [];
  child.on('message', (m: FromTarget) => waiting.shift()?.(m));
  const next = (): Promise<FromTarget> => new Promise((r) => waiting.push(r));
  const first = await next();
  if (first.op !== 'listening') throw new Error('bench target did not start');
  return {
    port: first.port,
    send: (m) => {
      const reply = next();
      child.send(m);
      return reply;
    },
    stop: async () => {
      child.send({ op: 'exit' });
      await new Promise((r) => child.once('exit', r));
    },
  };
}

// ---- source side ---------------------------------------------------------------------

interface RunResult {
  seconds: number;
  pages: number;
  pageBytes: number;
  wireBytes: number;
  frames: number;
  zeroPages: number;
  pagePayloadBytesPerSec: number;
  wireBytesPerSec: number;
  /** CPU seconds (user + system) per GiB of page payload, each end (target: in-process = same process). */
  senderCpuSecPerGiB: number;
  targetCpuSecPerGiB: number;
  verified: boolean;
}

async function targetCpuMicros(target: Target): Promise<number> {
  const r = await target.send({ op: 'cpu' });
  return r?.op === 'cpu' ? r.micros : NaN;
}

function cpuMicros(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

let seq = 0;

async function run(target: Target, src: Mem, opts: { seconds: number; rate: number; frameBytes?: number }): Promise<RunResult> {
  const migrationId = `bench-${process.pid}-${++seq}`;
  const secret = randomBytes(16).toString('hex');
  await target.send({ op: 'expect', migrationId, secret, pageCount: src.pageCount });
  const ch = await PageChannel.connect({
    address: { host: '127.0.0.1', port: target.port },
    migrationId,
    secret,
    pageCount: src.pageCount,
    rateBytesPerSec: opts.rate,
    frameBytes: opts.frameBytes,
  });
  const all = Array.from({ length: src.pageCount }, (_, i) => i);
  // Warm-up round (JIT, socket buffers), not measured.
  await ch.sendPages(all.slice(0, Math.min(all.length, 2048)), src);
  await ch.barrier();
  const before = ch.stats().sent;
  const cpu0 = cpuMicros();
  const tcpu0 = await targetCpuMicros(target);
  const t0 = performance.now();
  if (Number.isFinite(opts.rate) && opts.rate > 0) {
    // Capped: send exactly seconds × rate worth of pages (+ headers), then wait for the barrier.
    const pages = Math.floor((opts.seconds * opts.rate) / PS);
    for (let sent = 0; sent < pages; sent += all.length) await ch.sendPages(all.slice(0, Math.min(all.length, pages - sent)), src);
  } else {
    while (performance.now() - t0 < opts.seconds * 1000) await ch.sendPages(all, src);
  }
  await ch.barrier();
  const seconds = (performance.now() - t0) / 1000;
  const cpu = cpuMicros() - cpu0;
  const tcpu = (await targetCpuMicros(target)) - tcpu0;
  const after = ch.stats().sent;
  await ch.close();
  const sum = await target.send({ op: 'checksum', migrationId });
  const pageBytes = after.pageBytes - before.pageBytes;
  const wireBytes = after.wireBytes - before.wireBytes;
  return {
    seconds: round(seconds, 3),
    pages: after.pages - before.pages,
    pageBytes,
    wireBytes,
    frames: after.frames - before.frames,
    zeroPages: after.zeroPages - before.zeroPages,
    pagePayloadBytesPerSec: Math.round(pageBytes / seconds),
    wireBytesPerSec: Math.round(wireBytes / seconds),
    senderCpuSecPerGiB: round(cpu / 1e6 / (pageBytes / 2 ** 30), 3),
    targetCpuSecPerGiB: round(tcpu / 1e6 / (pageBytes / 2 ** 30), 3),
    verified: sum?.op === 'checksum' && sum.crc === crc32(src.mem),
  };
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const target = await startTarget(args.inProcess);
  const pageCount = Math.floor((args.mib * MiB) / PS);
  const random = new Mem(pageCount);
  randomFillSync(random.mem);
  const halfZero = new Mem(pageCount);
  randomFillSync(halfZero.mem);
  for (let p = 0; p < pageCount; p += 2) halfZero.mem.fill(0, p * PS, (p + 1) * PS);

  const log = (s: string): void => {
    if (!args.json) console.error(s);
  };
  log(`channel-2 bench: ${args.mib} MiB source, ${args.seconds} s per run, target ${args.inProcess ? 'in-process' : 'in a child process'}`);
  const uncapped = await run(target, random, { seconds: args.seconds, rate: 0 });
  log(`uncapped, random pages: ${(uncapped.pagePayloadBytesPerSec / 2 ** 30).toFixed(2)} GiB/s page payload (CPU s/GiB: sender ${uncapped.senderCpuSecPerGiB}, target ${uncapped.targetCpuSecPerGiB})`);
  const uncappedHalfZero = await run(target, halfZero, { seconds: args.seconds, rate: 0 });
  log(`uncapped, half zero pages: ${(uncappedHalfZero.pagePayloadBytesPerSec / 2 ** 30).toFixed(2)} GiB/s page payload`);
  const cap = args.capMib * MiB;
  const capped = await run(target, random, { seconds: args.seconds, rate: cap });
  const errorPct = round((capped.wireBytesPerSec / cap - 1) * 100, 2);
  log(`capped at ${args.capMib} MiB/s: ${(capped.wireBytesPerSec / MiB).toFixed(2)} MiB/s on the wire (${errorPct} %)`);
  await target.stop();

  const doc = {
    bench: 'channel-2',
    node: process.version,
    target: args.inProcess ? 'in-process' : 'child-process',
    pageSize: PS,
    sourceMiB: args.mib,
    uncapped: { ...uncapped, goalBytesPerSec: 2 ** 30, meetsGoal: uncapped.pagePayloadBytesPerSec >= 2 ** 30 },
    uncappedHalfZero,
    capped: { ...capped, capBytesPerSec: cap, errorPercent: errorPct, meetsGoal: Math.abs(errorPct) <= 3 },
  };
  console.log(JSON.stringify(doc, null, 2));
}

if (process.argv.includes('--serve')) void childMain();
else
  main().catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
