/**
 * Post-copy recovery of a relayed migration (docs/design/qemu-stream.md §7). When the migration
 * link dies during post-copy, ferry pauses both QEMUs and resumes the stream over the second
 * network. The recovered stream has no header: QEMU picks up its paused incoming migration
 * (`migrate-recover`) and the source resends every page missing from the target's
 * `receivedmap`, which the target sends on the return path (`RECV_BITMAP`).
 *
 * The relays carry it like the original stream, over mutual TLS between the agents, and change
 * one thing in it: the target's `RECV_BITMAP` gains the pages the target relay wrote into the
 * target QEMU's RAM file (StaticData's merge) that QEMU has not discarded since. Those pages
 * never went through QEMU's loader, so they are not in `receivedmap`; sent again, they would
 * meet a present page (`UFFDIO_COPY` fails with `EEXIST`) and the target would drop the
 * recovered stream. Everything else passes both ways untouched:
 *
 *   source QEMU ─unix─ source agent ══ TLS, second network ══ target agent ─unix─ target QEMU
 *
 * QEMU opens its post-copy preempt channel again after the main channel's handshake; it is the
 * second connection on both ends, carried untouched.
 */
import net from 'node:net';
import { Bitmap } from '../../../dataplane/bitmap';
import { listenUnix, splice, type RelayChannel, type RelayListener } from './link';

/** Return-path message types (`enum mig_rp_message_type`, §5). */
export const RpMessage = { SHUT: 1, PONG: 2, REQ_PAGES_ID: 3, REQ_PAGES: 4, RECV_BITMAP: 5, RESUME_ACK: 6, SWITCHOVER_ACK: 7 } as const;
/** Fixed lengths (`rp_cmd_args`); -1: variable. */
const RP_LEN: Record<number, number> = { 1: 4, 2: 4, 3: -1, 4: 12, 5: -1, 6: 4, 7: 0 };
/** QEMU caps a return-path message's length (`source_return_path_thread`). */
const RP_MAX_LEN = 512;
/** `RAMBLOCK_RECV_BITMAP_ENDING`: after a RECV_BITMAP's bitmap. */
const RECV_BITMAP_ENDING = 0x0123456789abcdefn;
/** A block's bitmap larger than this is refused (2^35 pages: 128 TiB of 4 KiB pages). */
const MAX_BITMAP_BYTES = 2 ** 32;

/** What a `POSTCOPY_RAM_DISCARD` command drops on the target: byte ranges of one RAM block. */
export interface RamDiscard {
  block: string;
  ranges: { start: number; length: number }[];
}

/**
 * Parse a whole `POSTCOPY_RAM_DISCARD` command record (`u8 0x08, be16 cmd, be16 len` and its
 * data: `u8 version 0, str8 block, u8 0`, then (be64 start, be64 length) pairs, in bytes).
 */
export function parseRamDiscard(record: Buffer): RamDiscard {
  const bad = (why: string) => new Error(`POSTCOPY_RAM_DISCARD: ${why}`);
  if (record.length < 5 || record[0] !== 0x08 || record.readUInt16BE(1) !== 6) throw bad('not a POSTCOPY_RAM_DISCARD command record');
  const len = record.readUInt16BE(3);
  if (record.length !== 5 + len) throw bad(`record of ${record.length} bytes for a length of ${len}`);
  const d = record.subarray(5);
  if (d.length < 3) throw bad(`${d.length} bytes of data, too short for a block name`);
  if (d[0] !== 0) throw bad(`version ${d[0]}, only 0 is known`);
  const nameLen = d[1]!;
  const pairsAt = 2 + nameLen + 1;
  if (d.length < pairsAt) throw bad(`a block name of ${nameLen} bytes in ${d.length} bytes of data`);
  if (d[2 + nameLen] !== 0) throw bad('the block name is not followed by its terminator');
  if ((d.length - pairsAt) % 16 !== 0) throw bad(`${d.length - pairsAt} bytes of ranges, not a whole number of (start, length) pairs`);
  const ranges: { start: number; length: number }[] = [];
  for (let at = pairsAt; at < d.length; at += 16) {
    const start = d.readBigUInt64BE(at);
    const length = d.readBigUInt64BE(at + 8);
    if (start > BigInt(Number.MAX_SAFE_INTEGER) || length > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`range ${start}+${length} is out of reach`);
    ranges.push({ start: Number(start), length: Number(length) });
  }
  return { block: d.subarray(2, 2 + nameLen).toString('latin1'), ranges };
}

/**
 * The target QEMU's return path on a recovered stream, parsed message by message, with the
 * pages `resident(block)` names (block-relative page numbers) added to each `RECV_BITMAP`'s
 * bitmap. Any other message passes as it is. A message QEMU would not send (unknown type, bad
 * length, a bitmap without its ending) is an error: the source would refuse it too.
 */
export class ReturnPathRewriter {
  private buf: Buffer = Buffer.alloc(0);
  /** Pages added to the bitmaps so far, by block. */
  readonly added = new Map<string, number>();

  constructor(
    private readonly resident: (block: string) => Bitmap | null,
    private readonly onRewrite?: (block: string, added: number) => void,
  ) {}

  /** Bytes from the target QEMU; returns what goes on to the source, whole messages only. */
  push(d: Buffer): Buffer[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    const out: Buffer[] = [];
    for (;;) {
      const n = this.messageLength();
      if (n === null) break;
      const msg = this.buf.subarray(0, n);
      this.buf = this.buf.subarray(n);
      out.push(msg.readUInt16BE(0) === RpMessage.RECV_BITMAP ? this.rewrite(msg) : msg);
    }
    return out;
  }

  /** Bytes held for an incomplete message. */
  get pending(): number {
    return this.buf.length;
  }

  /** The length of the first whole message in the buffer, or null if it is not all there. */
  private messageLength(): number | null {
    const b = this.buf;
    if (b.length < 4) return null;
    const type = b.readUInt16BE(0);
    const len = b.readUInt16BE(2);
    const want = RP_LEN[type];
    if (want === undefined) throw new Error(`return path: message type ${type} is not one QEMU 10.0 sends`);
    if (len > RP_MAX_LEN || (want >= 0 && len !== want)) throw new Error(`return path: message type ${type} with length ${len}${want >= 0 ? `, expected ${want}` : ''}`);
    if (type !== RpMessage.RECV_BITMAP) return b.length >= 4 + len ? 4 + len : null;
    if (len < 1) throw new Error('return path: RECV_BITMAP without a block name');
    if (b.length < 4 + len + 8) return null;
    const size = b.readBigUInt64BE(4 + len);
    if (size > BigInt(MAX_BITMAP_BYTES) || size % 8n !== 0n) throw new Error(`return path: RECV_BITMAP of ${size} bytes (a multiple of 8, at most ${MAX_BITMAP_BYTES})`);
    const total = 4 + len + 8 + Number(size) + 8;
    return b.length >= total ? total : null;
  }

  private rewrite(msg: Buffer): Buffer {
    const len = msg.readUInt16BE(2);
    const nameLen = msg[4]!;
    if (1 + nameLen !== len) throw new Error(`return path: RECV_BITMAP with a block name of ${nameLen} bytes in ${len}`);
    const block = msg.subarray(5, 5 + nameLen).toString('latin1');
    const sizeAt = 4 + len;
    const size = Number(msg.readBigUInt64BE(sizeAt));
    const end = msg.readBigUInt64BE(sizeAt + 8 + size);
    if (end !== RECV_BITMAP_ENDING) throw new Error(`return path: RECV_BITMAP of block "${block}" ends with 0x${end.toString(16)}, not QEMU's marker`);
    const extra = this.resident(block);
    if (!extra) return msg;
    const out = Buffer.from(msg); // a copy: the input may be a view of QEMU's socket buffer
    const bits = out.subarray(sizeAt + 8, sizeAt + 8 + size);
    // QEMU's bitmap is little-endian longs: bit i is bit (i & 7) of byte (i >> 3), as in Bitmap's
    // little-endian 32-bit words. Pages beyond the bitmap QEMU sent are not its block's.
    let added = 0;
    const words = Math.min(extra.words.length, size >> 2);
    for (let w = 0; w < words; w++) {
      const add = extra.words[w]!;
      if (add === 0) continue;
      const had = bits.readUInt32LE(w * 4);
      const now = (had | add) >>> 0;
      if (now !== had) {
        added += popcount((now & ~had) >>> 0);
        bits.writeUInt32LE(now, w * 4);
      }
    }
    this.added.set(block, (this.added.get(block) ?? 0) + added);
    this.onRewrite?.(block, added);
    return out;
  }
}

function popcount(x: number): number {
  let n = 0;
  for (; x; x &= x - 1) n++;
  return n;
}

export interface RecoveryStats {
  /** Connections carried (1: the stream, 2: with the preempt channel). */
  connections: number;
  /** Pages added to the target's RECV_BITMAP (RAM-file pages QEMU never loaded). */
  addedPages: number;
  error: string | null;
}

/**
 * Target side: the recovered stream's connections from the source agent (a relay listener on
 * the second network) into the target QEMU's `migrate-recover` socket, the first with its
 * return path rewritten, the second (the preempt channel) untouched.
 */
export class RecoveryTarget {
  private readonly sockets: net.Socket[] = [];
  private readonly rewriter: ReturnPathRewriter;
  private readonly s: RecoveryStats = { connections: 0, addedPages: 0, error: null };
  private closed = false;

  constructor(
    private readonly opts: {
      listener: RelayListener;
      connectQemu: () => Promise<net.Socket>;
      resident: (block: string) => Bitmap | null;
      log?: (line: string) => void;
    },
  ) {
    this.rewriter = new ReturnPathRewriter(opts.resident, (block, added) =>
      opts.log?.(`relay recovery: RECV_BITMAP of "${block}": ${added} page(s) the relay wrote into the RAM file added (QEMU did not load them)`),
    );
    const main = this.carryMain();
    void opts.listener.preempt.then(async (link) => {
      // QEMU tells its channels apart by their order: the preempt channel after the stream's.
      await main.catch(() => undefined);
      await this.carryPreempt(link);
    });
  }

  get address(): { host: string; port: number } {
    return this.opts.listener.address;
  }

  stats(): RecoveryStats {
    return { ...this.s, addedPages: [...this.rewriter.added.values()].reduce((a, b) => a + b, 0) };
  }

  close(): void {
    this.closed = true;
    this.opts.listener.close();
    for (const s of this.sockets) s.destroy();
  }

  private fail(e: Error): void {
    if (this.s.error) return;
    this.s.error = e.message;
    this.opts.log?.(`relay recovery: ${e.message}`);
    for (const s of this.sockets) s.destroy();
  }

  private async carryMain(): Promise<void> {
    const link = await this.opts.listener.accepted;
    if (this.closed) return void link.destroy();
    this.sockets.push(link);
    let qemu: net.Socket;
    try {
      qemu = await this.opts.connectQemu();
    } catch (e) {
      this.fail(new Error(`the target QEMU's recovery socket: ${(e as Error).message}`));
      return;
    }
    this.sockets.push(qemu);
    this.s.connections++;
    this.opts.log?.('relay recovery: the recovered stream is connected');
    link.on('error', (e) => this.fail(new Error(`the recovery link failed: ${e.message}`)));
    qemu.on('error', (e) => this.fail(new Error(`the target QEMU's recovery socket failed: ${e.message}`)));
    link.pipe(qemu); // the stream: untouched
    qemu.on('data', (d: Buffer) => {
      let out: Buffer[];
      try {
        out = this.rewriter.push(d);
      } catch (e) {
        this.fail(e as Error);
        return;
      }
      for (const m of out) if (!link.write(m)) qemu.pause();
    });
    link.on('drain', () => qemu.resume());
    qemu.on('end', () => link.end());
    link.on('close', () => qemu.destroy());
    qemu.on('close', () => link.destroy());
    link.resume();
    qemu.resume();
  }

  private async carryPreempt(link: net.Socket): Promise<void> {
    if (this.closed || this.s.error) return void link.destroy();
    this.sockets.push(link);
    let qemu: net.Socket;
    try {
      qemu = await this.opts.connectQemu();
    } catch (e) {
      this.opts.log?.(`relay recovery: the preempt channel could not reach the target QEMU: ${(e as Error).message}`);
      link.destroy();
      return;
    }
    this.sockets.push(qemu);
    this.s.connections++;
    splice(qemu, link, { onError: (e) => this.opts.log?.(`relay recovery: the preempt channel failed: ${e.message}`) });
  }
}

/**
 * Source side: the source QEMU resumes into a unix socket of the agent's; its first connection
 * is the stream, its second the preempt channel, each carried over its own link to the target
 * agent's recovery listener, untouched.
 */
export class RecoverySource {
  private readonly server: net.Server;
  private readonly sockets: net.Socket[] = [];
  private accepted = 0;
  private mainLinked: Promise<void> = Promise.resolve();
  private error: string | null = null;

  private constructor(
    private readonly opts: { listenPath: string; connect: (channel: RelayChannel) => Promise<net.Socket>; log?: (line: string) => void },
  ) {
    this.server = net.createServer((s) => this.accept(s));
  }

  static async listen(opts: { listenPath: string; connect: (channel: RelayChannel) => Promise<net.Socket>; log?: (line: string) => void }): Promise<RecoverySource> {
    const r = new RecoverySource(opts);
    await listenUnix(r.server, opts.listenPath);
    return r;
  }

  get lastError(): string | null {
    return this.error;
  }

  close(): void {
    this.server.close();
    for (const s of this.sockets) s.destroy();
  }

  private accept(qemu: net.Socket): void {
    qemu.pause();
    qemu.on('error', () => undefined);
    const n = this.accepted++;
    if (n > 1) {
      // QEMU opens the stream and, with postcopy-preempt, one more: nothing else.
      qemu.destroy();
      return;
    }
    this.sockets.push(qemu);
    const channel: RelayChannel = n === 0 ? 'main' : 'preempt';
    const linked = (n === 0 ? Promise.resolve() : this.mainLinked).then(() => this.opts.connect(channel));
    if (n === 0) this.mainLinked = linked.then(() => undefined, () => undefined);
    linked.then(
      (link) => {
        this.sockets.push(link);
        this.opts.log?.(`relay recovery: QEMU's ${channel === 'main' ? 'stream' : 'preempt channel'} goes to the target over the second network`);
        splice(qemu, link, { onError: (e) => this.failed(`the recovered ${channel === 'main' ? 'stream' : 'preempt channel'}: ${e.message}`) });
      },
      (e: Error) => {
        this.failed(e.message);
        qemu.destroy();
      },
    );
  }

  private failed(why: string): void {
    this.error ??= why;
    this.opts.log?.(`relay recovery: ${why}`);
  }
}
