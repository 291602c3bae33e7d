/**
 * The QEMU migration-stream reader and writer on real streams captured from QEMU 10.0 (see
 * scripts/qemu-stream-fixture.mjs): round trip, chunk-size independence, bounded buffering,
 * diverting pages, and the typed errors on streams the relay must refuse.
 */
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { QemuStreamError, type PageEvent, type StreamEvent } from '../../src/hypervisor/qemu/stream/format';
import { readStream, StreamReader } from '../../src/hypervisor/qemu/stream/reader';
import { encodePage, encodeRamPart, encodeSectionHeader, StreamWriter } from '../../src/hypervisor/qemu/stream/writer';

const FIXTURES = path.join(import.meta.dirname, '../fixtures/qemu-stream');

/** q35, 16 MiB, SeaBIOS running; return-path; precopy (START, PART, SWITCHOVER_START, END, tail). */
const precopy = fixture('precopy');
/** q35, 16 MiB, paused; return-path + postcopy-ram, switched to postcopy at once (ADVISE, discards, PACKAGED). */
const postcopy = fixture('postcopy');
/** The main channel of a multifd migration: its START carries MULTIFD_FLUSH, its pages are elsewhere. */
const multifd = fixture('multifd');

function fixture(name: string): Buffer {
  return zlib.gunzipSync(fs.readFileSync(path.join(FIXTURES, `${name}.bin.gz`)));
}

/** Feed `buf` to a reader in the given chunk sizes (cycled), collecting every event. */
function readChunked(buf: Buffer, sizes: () => number): { events: StreamEvent[]; maxPending: number } {
  const r = new StreamReader();
  const events: StreamEvent[] = [];
  let maxPending = 0;
  for (let i = 0; i < buf.length; ) {
    const n = Math.max(1, sizes());
    r.push(buf.subarray(i, i + n));
    i += n;
    events.push(...r.drain());
    maxPending = Math.max(maxPending, r.pendingBytes);
  }
  r.end();
  return { events, maxPending };
}

/**
 * Events in a comparable form: opaque `package`/`tail` runs are split wherever the input was
 * chunked (streamed, by design), so adjacent runs of the same kind are merged; buffers are copied.
 */
function normalize(events: StreamEvent[]): StreamEvent[] {
  const out: StreamEvent[] = [];
  for (const e of events) {
    const prev = out[out.length - 1];
    if (e.kind === 'opaque' && prev?.kind === 'opaque' && prev.what === e.what && (e.what === 'tail' || e.what === 'package') && prev.offset + prev.bytes.length === e.offset) {
      out[out.length - 1] = { ...prev, bytes: Buffer.concat([prev.bytes, e.bytes]) };
    } else if (e.kind === 'opaque') out.push({ ...e, bytes: Buffer.from(e.bytes) });
    else if (e.kind === 'page') {
      const { raw: _raw, ...page } = e;
      out.push({ ...page, data: e.data ? Buffer.from(e.data) : null });
    }
    else out.push(e);
  }
  return out;
}

/** What the target ends up with: per (block, offset), the last copy in stream order. */
function pageMap(events: StreamEvent[]): Map<string, string> {
  const m = new Map<string, string>();
  for (const e of events) {
    if (e.kind === 'page') m.set(`${e.block}@${e.addr.toString(16)}`, e.data ? e.data.toString('base64') : `zero:${e.fill}`);
  }
  return m;
}

/** Everything but offsets and the CONTINUE marker, which a rewrite legitimately changes. */
function content(events: StreamEvent[]): unknown[] {
  return normalize(events).map((e) => {
    const { offset: _offset, ...rest } = e;
    if (rest.kind === 'page') {
      const { raw: _raw, ...page } = rest;
      return { ...page, continued: false };
    }
    return rest;
  });
}

function mulberry32(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function expectStreamError(fn: () => unknown, code: string, offset: number): QemuStreamError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(QemuStreamError);
    const err = e as QemuStreamError;
    expect({ code: err.code, offset: err.offset }, err.message).toEqual({ code, offset });
    return err;
  }
  throw new Error(`expected a ${code} QemuStreamError`);
}

function pages(events: StreamEvent[]): PageEvent[] {
  return events.filter((e): e is PageEvent => e.kind === 'page');
}

describe('qemu stream reader: real QEMU 10.0 streams', () => {
  it('parses the precopy fixture into the documented structure', () => {
    const ev = readStream(precopy);
    expect(ev[0]).toMatchObject({ kind: 'opaque', what: 'header', offset: 0 });
    const header = ev[0]!.kind === 'opaque' ? ev[0]!.bytes : Buffer.alloc(0);
    expect(header.subarray(0, 8).toString('hex')).toBe('5145564d00000003');
    expect(header.subarray(13).toString('latin1')).toMatch(/^pc-q35-10\.\d+$/);
    const start = ev.find((e) => e.kind === 'section');
    expect(start).toMatchObject({ type: 'start', idstr: 'ram', instanceId: 0, versionId: 4 });
    const mem = ev.find((e) => e.kind === 'mem-size');
    expect(mem?.kind === 'mem-size' && mem.blocks.map((b) => b.name)).toContain('pc.ram');
    expect(mem?.kind === 'mem-size' && mem.blocks.reduce((s, b) => s + b.usedLength, 0)).toBe(mem?.kind === 'mem-size' && mem.totalBytes);
    // The first pass sends every page of every block.
    const seen = pageMap(ev);
    const total = mem?.kind === 'mem-size' ? mem.totalBytes / 4096 : 0;
    expect(seen.size).toBe(total);
    // Every section ends with EOS + footer; the stream ends in the opaque tail (FULL…EOF vmdesc).
    expect(ev.filter((e) => e.kind === 'eos')).toHaveLength(ev.filter((e) => e.kind === 'section').length);
    expect(ev.filter((e) => e.kind === 'footer')).toHaveLength(ev.filter((e) => e.kind === 'section').length);
    expect(ev[ev.length - 1]).toMatchObject({ kind: 'opaque', what: 'tail' });
    expect(ev.some((e) => e.kind === 'opaque' && e.command === 11)).toBe(true); // SWITCHOVER_START
    // Opaque runs are exactly the input bytes at their offsets.
    for (const e of ev) if (e.kind === 'opaque') expect(e.bytes.equals(precopy.subarray(e.offset, e.offset + e.bytes.length))).toBe(true);
  });

  it('parses the postcopy fixture: ADVISE, discards, the PACKAGED blob as opaque, then ram PART/END and EOF', () => {
    const ev = normalize(readStream(postcopy));
    const cmds = ev.flatMap((e) => (e.kind === 'opaque' && e.what === 'command' ? [e.command] : []));
    expect(cmds).toContain(3); // POSTCOPY_ADVISE
    expect(cmds).toContain(6); // POSTCOPY_RAM_DISCARD
    expect(cmds).toContain(7); // PACKAGED
    const pkgIdx = ev.findIndex((e) => e.kind === 'opaque' && e.command === 7);
    const pkg = ev[pkgIdx + 1];
    expect(pkg?.kind === 'opaque' && pkg.what).toBe('package');
    const cmdBytes = ev[pkgIdx]!.kind === 'opaque' ? (ev[pkgIdx] as { bytes: Buffer }).bytes : Buffer.alloc(0);
    expect(pkg?.kind === 'opaque' && pkg.bytes.length).toBe(cmdBytes.readUInt32BE(5));
    expect(pkg?.kind === 'opaque' && pkg.bytes.subarray(0, 5).toString('hex')).toBe('0800040000'); // LISTEN first
    const types = ev.flatMap((e) => (e.kind === 'section' ? [e.type] : []));
    expect(types[0]).toBe('start');
    expect(types[types.length - 1]).toBe('end');
    expect(ev[ev.length - 1]).toMatchObject({ kind: 'opaque', what: 'tail', bytes: Buffer.from([0]) }); // EOF, no vmdesc
  });
});

describe('qemu stream writer: round trip', () => {
  for (const [name, buf] of [
    ['precopy', precopy],
    ['postcopy', postcopy],
  ] as const) {
    it(`${name}: reader → writer keeps every byte except the names CONTINUE records omitted`, () => {
      const ev = readStream(buf);
      const out = new StreamWriter().writeAll(ev);
      const continued = pages(ev).filter((p) => p.continued);
      expect(continued.length).toBeGreaterThan(0); // QEMU uses CONTINUE: the re-encoding is exercised
      const extra = continued.reduce((s, p) => s + 1 + Buffer.byteLength(p.block, 'latin1'), 0);
      expect(out.length).toBe(buf.length + extra);
      // Same content for the target: same events apart from offsets and CONTINUE, same page map.
      const back = readStream(out);
      expect(content(back)).toEqual(content(ev));
      expect(pageMap(back)).toEqual(pageMap(ev));
      expect(pages(back).some((p) => p.continued)).toBe(false);
      // A stream without CONTINUE round-trips byte for byte.
      expect(new StreamWriter().writeAll(back).equals(out)).toBe(true);
    });
  }

  it('writePage forwards a record as read where the target resolves it the same, and names the block where a CONTINUE would now mean another', () => {
    const ev = readStream(precopy);
    // Forward every event but the PART records that name a block (a relay diverting them),
    // except the first: the CONTINUE records after a dropped one now follow another block.
    const w = new StreamWriter();
    const out: Buffer[] = [];
    const forwarded: StreamEvent[] = [];
    let named = 0;
    let asRead = 0;
    let section: string | null = null;
    for (const e of ev) {
      if (e.kind === 'section') section = e.type;
      if (e.kind === 'page') {
        if (section === 'part' && !e.continued && named++ > 0) continue;
        const b = w.writePage(e);
        if (b === e.raw) asRead++;
        out.push(b);
      } else out.push(w.write(e));
      forwarded.push(e);
    }
    expect(named).toBeGreaterThan(2);
    expect(asRead).toBeGreaterThan(0);
    expect(asRead).toBeLessThan(pages(forwarded).length); // the CONTINUE records after a dropped one had to be named
    // The target resolves every forwarded page to the same (block, offset) with the same bytes.
    const back = readStream(Buffer.concat(out));
    expect(pages(back)).toHaveLength(pages(forwarded).length);
    expect(pageMap(back)).toEqual(pageMap(forwarded));
  });

  it('writeRamPart encodes the same bytes as encodeRamPart, in one buffer, between records only', () => {
    const ev = readStream(precopy);
    const ps = pages(ev).slice(0, 300);
    const w = new StreamWriter();
    const start = ev.findIndex((e) => e.kind === 'section');
    // Bring a writer to the first boundary after ram START, then insert.
    let i = 0;
    for (; i < ev.length; i++) {
      w.write(ev[i]!);
      if (i > start && ev[i]!.kind === 'footer') break;
    }
    const id = (ev[start] as { sectionId: number }).sectionId;
    expect(w.writeRamPart(id, ps).equals(encodeRamPart(id, ps))).toBe(true);
    w.write({ kind: 'section', type: 'part', offset: 0, sectionId: id });
    expect(() => w.writeRamPart(id, ps)).toThrow(QemuStreamError);
  });

  it('a stream without CONTINUE (written by hand with encodeRamPart) round-trips byte for byte', () => {
    const ev = readStream(precopy);
    const header = ev[0]!.kind === 'opaque' ? ev[0]!.bytes : Buffer.alloc(0);
    const startEnd = ev.findIndex((e) => e.kind === 'footer');
    const start = new StreamWriter().writeAll(ev.slice(1, startEnd + 1));
    const some = pages(ev).slice(0, 50);
    const part = encodeRamPart(1, some.reverse());
    const end = encodeRamPart(1, []);
    end[0] = 0x03;
    const stream = Buffer.concat([header, start, part, end, Buffer.from([0])]);
    expect(new StreamWriter().writeAll(readStream(stream)).equals(stream)).toBe(true);
  });
});

describe('qemu stream reader: grammar details not in the fixtures', () => {
  const header = (() => {
    const h = readStream(precopy)[0]!;
    return h.kind === 'opaque' ? h.bytes : Buffer.alloc(0);
  })();
  const be64 = (v: number) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(BigInt(v));
    return b;
  };
  const str8 = (s: string) => Buffer.concat([Buffer.from([s.length]), Buffer.from(s, 'latin1')]);
  const advise = Buffer.from('0800030010' + '0000000000201000' + '0000000000001000', 'hex'); // POSTCOPY_ADVISE(len 16)
  const eosFooter = Buffer.concat([be64(0x10), Buffer.from([0x7e, 0, 0, 0, 1])]);
  const tail = Buffer.from([0x03, 0, 0, 0, 1, ...be64(0x10), 0x7e, 0, 0, 0, 1, 0x00]); // empty END, EOF

  it('MEM_SIZE with postcopy advised: hugepage blocks carry a page size, found without being told', () => {
    const start = Buffer.concat([
      encodeSectionHeader('start', 1),
      be64(0x200000 + 0x1000 + 0x200000 + 0x4),
      str8('huge'), be64(0x200000), be64(0x200000),
      str8('small'), be64(0x1000),
      str8('last'), be64(0x200000), be64(0x200000),
      eosFooter,
    ]);
    const stream = Buffer.concat([header, advise, start, tail]);
    const ev = readStream(stream, 3);
    const mem = ev.find((e) => e.kind === 'mem-size');
    expect(mem).toMatchObject({
      totalBytes: 0x401000,
      blocks: [
        { name: 'huge', usedLength: 0x200000, pageSize: 0x200000 },
        { name: 'small', usedLength: 0x1000 },
        { name: 'last', usedLength: 0x200000, pageSize: 0x200000 },
      ],
    });
    expect(new StreamWriter().writeAll(ev).equals(stream)).toBe(true);
    // Without ADVISE the target reads no page sizes, and neither does the reader: the 0x00 that
    // starts huge's page size (after the 17-byte START header, MEM_SIZE, huge's entry) is refused.
    expect(expectStreamError(() => readStream(Buffer.concat([header, start, tail])), 'BAD_RAM_RECORD', header.length + 17 + 8 + 13).message).toMatch(/empty block name/);
  });

  it('CONTINUE across a section boundary resolves to the previous section\'s block; the writer names it', () => {
    const start = Buffer.concat([encodeSectionHeader('start', 1), be64(0x2000 + 0x4), str8('pc.ram'), be64(0x2000), eosFooter]);
    const part1 = Buffer.concat([encodeSectionHeader('part', 1), encodePage({ block: 'pc.ram', addr: 0, data: null, fill: 0 }), eosFooter]);
    const part2 = Buffer.concat([encodeSectionHeader('part', 1), be64(0x1000 | 0x20 | 0x08), Buffer.alloc(4096, 0xab), eosFooter]);
    const stream = Buffer.concat([header, start, part1, part2, tail]);
    const ev = readStream(stream);
    expect(pages(ev).map((p) => [p.block, p.addr, p.continued])).toEqual([
      ['pc.ram', 0, false],
      ['pc.ram', 0x1000, true],
    ]);
    const out = new StreamWriter().writeAll(ev);
    expect(out.length).toBe(stream.length + 7);
    expect(pageMap(readStream(out))).toEqual(pageMap(ev));
  });
});

describe('qemu stream reader: chunking', () => {
  const whole = normalize(readStream(precopy, precopy.length));
  const rand = mulberry32(42);
  const cases: [string, () => number][] = [
    ['1 byte', () => 1],
    ['7 bytes', () => 7],
    ['64 KiB', () => 65536],
    ['random 1..10000', () => 1 + Math.floor(rand() * 10000)],
  ];
  for (const [name, sizes] of cases) {
    it(`same events with ${name} chunks, and at most one record buffered`, () => {
      const { events, maxPending } = readChunked(precopy, sizes);
      expect(normalize(events)).toEqual(whole);
      // After draining, what is left is at most one incomplete record (header + name + page) or a
      // part of the chunk just pushed: never the stream.
      expect(maxPending).toBeLessThanOrEqual(Math.max(8 + 1 + 255 + 4096, name === '64 KiB' ? 65536 : 10000));
    });
  }

  it('postcopy: same events with 1-byte and random chunks (the PACKAGED blob is streamed)', () => {
    const ref = normalize(readStream(postcopy, postcopy.length));
    expect(normalize(readChunked(postcopy, () => 1).events)).toEqual(ref);
    const r2 = mulberry32(7);
    expect(normalize(readChunked(postcopy, () => 1 + Math.floor(r2() * 3000)).events)).toEqual(ref);
  });

  it('detach after PACKAGED (a relay forwarding post-copy untouched): re-encoded head + detached bytes + raw rest is the same stream for the target', () => {
    const r2 = mulberry32(11);
    for (let trial = 0; trial < 20; trial++) {
      const r = new StreamReader();
      const w = new StreamWriter();
      const out: Buffer[] = [];
      let detachedAt = -1;
      for (let i = 0; i < postcopy.length; ) {
        const n = 1 + Math.floor(r2() * 5000);
        const chunk = postcopy.subarray(i, i + n);
        i += n;
        if (r.isDetached) {
          out.push(chunk);
          continue;
        }
        r.push(chunk);
        for (let e = r.next(); e; e = r.next()) {
          out.push(w.write(e));
          if (e.kind === 'opaque' && e.what === 'command' && e.command === 7) {
            detachedAt = e.offset;
            out.push(r.detach());
            break;
          }
        }
        expect(r.next()).toBeNull(); // nothing is parsed once detached
      }
      r.end(); // a detached reader does not judge the stream's end
      expect(detachedAt).toBeGreaterThan(0);
      const back = readStream(Buffer.concat(out));
      expect(pageMap(back)).toEqual(pageMap(readStream(postcopy)));
      // From the PACKAGED command on, the bytes are QEMU's own.
      const tail = Buffer.concat(out).subarray(Buffer.concat(out).length - (postcopy.length - detachedAt));
      expect(tail.equals(postcopy.subarray(detachedAt))).toBe(true);
    }
  });

  it('with 1-byte chunks, a page record is held until complete and nothing else is', () => {
    const { maxPending } = readChunked(precopy, () => 1);
    expect(maxPending).toBeLessThanOrEqual(8 + 1 + 255 + 4096);
  });
});

describe('qemu stream: diverting pages', () => {
  it('dropping every PART page and re-inserting the newest copies in reverse in a later PART gives the same target memory', () => {
    const ev = readStream(precopy);
    const held = new Map<string, PageEvent>();
    const w = new StreamWriter();
    const out: Buffer[] = [];
    let section: string | null = null;
    let sid = 0;
    for (const e of ev) {
      if (e.kind === 'section') {
        section = e.type;
        sid = e.sectionId;
        if (e.type === 'end') {
          out.push(w.write({ kind: 'section', type: 'part', offset: 0, sectionId: sid }));
          for (const p of [...held.values()].reverse()) out.push(w.write(p));
          out.push(w.write({ kind: 'eos', offset: 0 }), w.write({ kind: 'footer', offset: 0, sectionId: sid }));
        }
      }
      if (e.kind === 'page' && section === 'part') {
        held.set(`${e.block}@${e.addr}`, e);
        continue;
      }
      out.push(w.write(e));
    }
    expect(held.size).toBeGreaterThan(4000);
    const rewritten = readStream(Buffer.concat(out));
    expect(pageMap(rewritten)).toEqual(pageMap(ev));
    expect(pages(rewritten).map((p) => p.addr)).not.toEqual(pages(ev).map((p) => p.addr));
  });
});

describe('qemu stream reader: errors', () => {
  it('truncated: end() names the record that was cut and where it started', () => {
    const ev = readStream(precopy);
    const page = pages(ev).find((p) => p.data !== null)!;
    const r = new StreamReader();
    r.push(precopy.subarray(0, page.offset + 100));
    r.drain();
    expectStreamError(() => r.end(), 'TRUNCATED', page.offset);
    // Cut at a record boundary before EOF: still a truncated stream.
    const footer = ev.find((e) => e.kind === 'footer')!;
    const r2 = new StreamReader();
    r2.push(precopy.subarray(0, footer.offset + 5));
    r2.drain();
    expect(expectStreamError(() => r2.end(), 'TRUNCATED', footer.offset + 5).message).toMatch(/before QEMU_VM_EOF/);
    // Cut in the header.
    const r3 = new StreamReader();
    r3.push(precopy.subarray(0, 10));
    expect(r3.drain()).toEqual([]);
    expectStreamError(() => r3.end(), 'TRUNCATED', 0);
    // Cut inside a command.
    const cmd = ev.find((e) => e.kind === 'opaque' && e.what === 'command')!;
    expectStreamError(() => readStream(precopy.subarray(0, cmd.offset + 3)), 'TRUNCATED', cmd.offset);
  });

  it('unknown RAM flag, or a known one outside the capability set, at its record offset', () => {
    const ev = readStream(precopy);
    const page = pages(ev).find((p) => p.continued && p.data === null)!;
    const patched = Buffer.from(precopy);
    patched.writeUInt16BE((patched.readUInt16BE(page.offset + 6) & 0xf000) | 0x400, page.offset + 6); // bit 10: undefined
    expectStreamError(() => readStream(patched), 'UNKNOWN_RAM_FLAG', page.offset);
    patched.writeUInt16BE((patched.readUInt16BE(page.offset + 6) & 0xf000) | 0x00a, page.offset + 6); // ZERO|PAGE
    expect(expectStreamError(() => readStream(patched), 'UNKNOWN_RAM_FLAG', page.offset).message).toMatch(/combination/);
    patched.writeUInt16BE((patched.readUInt16BE(page.offset + 6) & 0xf000) | 0x060, page.offset + 6); // XBZRLE|CONTINUE
    expect(expectStreamError(() => readStream(patched), 'UNSUPPORTED_RAM_FLAG', page.offset).message).toMatch(/XBZRLE/);
  });

  it('a multifd main channel is refused at its MULTIFD_FLUSH record', () => {
    const r = new StreamReader();
    r.push(multifd);
    // The flush follows the MEM_SIZE block list of ram START.
    const before: StreamEvent[] = [];
    for (;;) {
      try {
        const e = r.next();
        if (!e) break;
        before.push(e);
      } catch {
        break;
      }
    }
    expect(before[before.length - 1]?.kind).toBe('mem-size');
    const err = expectStreamError(() => r.next(), 'UNSUPPORTED_RAM_FLAG', r.position);
    expect(multifd.readBigUInt64BE(err.offset)).toBe(0x200n);
    expect(err.message).toMatch(/MULTIFD_FLUSH/);
    // The reader stays failed.
    expect(() => r.next()).toThrow(err);
  });

  it('refuses what it cannot delimit: a live section other than ram, FULL before ram END, an unknown top-level byte', () => {
    const header = readStream(precopy)[0]!;
    const h = header.kind === 'opaque' ? header.bytes : Buffer.alloc(0);
    const bitmap = Buffer.concat([h, encodeSectionHeader('start', 2, { idstr: 'dirty-bitmap', instanceId: 0, versionId: 1 })]);
    expect(expectStreamError(() => readStream(bitmap), 'UNDELIMITABLE_SECTION', h.length).message).toMatch(/dirty-bitmap/);
    const full = Buffer.concat([h, Buffer.from([0x04, 0, 0, 0, 9])]);
    expectStreamError(() => readStream(full), 'UNDELIMITABLE_SECTION', h.length);
    const part = Buffer.concat([h, encodeSectionHeader('part', 1)]);
    expectStreamError(() => readStream(part), 'UNDELIMITABLE_SECTION', h.length);
    const junk = Buffer.concat([h, Buffer.from([0x42])]);
    expectStreamError(() => readStream(junk), 'UNKNOWN_RECORD', h.length);
    const notQemu = Buffer.from('GET / HTTP/1.1\r\n');
    expectStreamError(() => readStream(notQemu), 'BAD_HEADER', 0);
  });

  it('CONTINUE with no previous block, and a page of an unknown block, are bad records', () => {
    const ev = readStream(precopy);
    const startEnd = ev.findIndex((e) => e.kind === 'footer');
    const prefix = precopy.subarray(0, ev[startEnd]!.offset + 5);
    const cont = Buffer.alloc(8);
    cont.writeBigUInt64BE(0x1022n);
    const s1 = Buffer.concat([prefix, encodeSectionHeader('part', 1), cont, Buffer.from([0])]);
    expect(expectStreamError(() => readStream(s1), 'BAD_RAM_RECORD', prefix.length + 5).message).toMatch(/CONTINUE/);
    const s2 = Buffer.concat([prefix, encodeSectionHeader('part', 1), encodePage({ block: 'nope', addr: 0, data: null, fill: 0 })]);
    expectStreamError(() => readStream(s2), 'BAD_RAM_RECORD', prefix.length + 5);
    const s3 = Buffer.concat([prefix, encodeSectionHeader('part', 1), encodePage({ block: 'pc.ram', addr: 64 << 20, data: null, fill: 0 })]);
    expect(expectStreamError(() => readStream(s3), 'BAD_RAM_RECORD', prefix.length + 5).message).toMatch(/beyond/);
  });

  it('the writer refuses events that would not form a stream', () => {
    const w = new StreamWriter();
    expect(() => w.write({ kind: 'page', offset: 0, block: 'pc.ram', addr: 0, data: null, fill: 0, continued: false })).toThrow(QemuStreamError);
    const w2 = new StreamWriter();
    w2.write({ kind: 'section', type: 'part', offset: 0, sectionId: 1 });
    w2.write({ kind: 'eos', offset: 0 });
    expect(() => w2.write({ kind: 'footer', offset: 0, sectionId: 2 })).toThrow(/footer names section 2/);
  });
});
