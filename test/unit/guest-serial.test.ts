import { describe, expect, it } from 'vitest';
import { newcArchive, parseSerial, qemuGuestArgs } from '../../src/hypervisor/qemu/guest-image';

describe('parseSerial (the QEMU test guest console)', () => {
  it('reads up, ready, verify ok/FAIL and stats lines', () => {
    const text = [
      'SeaBIOS (version 1.16.3-debian-1.16.3-2)',
      '',
      'FERRY guest up',
      '',
      'FERRY workload ready wss=64 rate=2000',
      '',
      'FERRY verify ok pass=1 pages=16384 writes=1990',
      '',
      'FERRY stats t_ms=1005 writes=1990 verify_us=5780',
      'FERRY verify FAIL pass=2 bad=3 first=5',
      'FERRY verify ok pass=3 pages=16384 writes=6000',
      '',
    ].join('\r\n');
    const s = parseSerial(text);
    expect(s.up).toBe(true);
    expect(s.ready).toBe(true);
    expect(s.wss).toBe(64);
    expect(s.rate).toBe(2000);
    expect(s.exited).toBe(false);
    expect(s.verifies).toEqual([
      { pass: 1, ok: true, pages: 16384, writes: 1990 },
      { pass: 2, ok: false, bad: 3, first: 5 },
      { pass: 3, ok: true, pages: 16384, writes: 6000 },
    ]);
    expect(s.stats).toEqual([{ tMs: 1005, writes: 1990, verifyUs: 5780 }]);
  });

  it('finds lines after kernel noise on the same line, and ignores an unfinished last line', () => {
    const s = parseSerial('[    2.1] random: crng init doneFERRY guest up\nFERRY verify ok pass=1 pages=16384 writes=12\nFERRY verify ok pass=2 pages=163');
    expect(s.up).toBe(true);
    expect(s.ready).toBe(false);
    expect(s.verifies).toEqual([{ pass: 1, ok: true, pages: 16384, writes: 12 }]);
  });

  it('is empty for an empty or silent console, and notices a workload that exited', () => {
    expect(parseSerial('')).toEqual({ up: false, ready: false, verifies: [], stats: [], exited: false });
    expect(parseSerial('FERRY guest up\n\nFERRY workload exited status=1\n').exited).toBe(true);
  });
});

describe('newcArchive', () => {
  it('writes 070701 headers, 4-byte alignment and the trailer', () => {
    const a = newcArchive([
      { type: 'dir', name: 'dev' },
      { type: 'chardev', name: 'dev/console', major: 5, minor: 1 },
      { type: 'file', name: '/init', data: Buffer.from('#!/bin/sh\n'), mode: 0o755 },
      { type: 'symlink', name: 'bin/sh', target: 'busybox' },
    ]);
    const entries: { name: string; mode: number; size: number; rdev: [number, number]; data: string }[] = [];
    let off = 0;
    for (;;) {
      expect(off % 4).toBe(0);
      expect(a.toString('ascii', off, off + 6)).toBe('070701');
      const field = (i: number): number => parseInt(a.toString('ascii', off + 6 + i * 8, off + 14 + i * 8), 16);
      const size = field(6);
      const nameSize = field(11);
      const name = a.toString('utf8', off + 110, off + 110 + nameSize - 1);
      expect(a[off + 110 + nameSize - 1]).toBe(0);
      const dataOff = off + 110 + nameSize + ((4 - ((110 + nameSize) % 4)) % 4);
      entries.push({ name, mode: field(1), size, rdev: [field(9), field(10)], data: a.toString('utf8', dataOff, dataOff + size) });
      off = dataOff + size + ((4 - (size % 4)) % 4);
      if (name === 'TRAILER!!!') break;
    }
    expect(off).toBe(a.length);
    expect(entries.map((e) => e.name)).toEqual(['dev', 'dev/console', 'init', 'bin/sh', 'TRAILER!!!']);
    expect(entries[0]?.mode).toBe(0o040755);
    expect(entries[1]?.mode).toBe(0o020600);
    expect(entries[1]?.rdev).toEqual([5, 1]);
    expect(entries[2]?.mode).toBe(0o100755);
    expect(entries[2]?.data).toBe('#!/bin/sh\n');
    expect(entries[3]?.mode).toBe(0o120777);
    expect(entries[3]?.data).toBe('busybox');
  });
});

describe('qemuGuestArgs', () => {
  it('boots the kernel and initrd under TCG with the workload parameters on the command line', () => {
    const args = qemuGuestArgs(
      { kernel: '/k/vmlinuz', initrd: '/k/initrd.gz' },
      { memoryMiB: 256, wss: 64, rate: 1000, verifyMs: 500, seed: 9, serialLog: '/tmp/s.log' },
    );
    const after = (flag: string): string | undefined => args[args.indexOf(flag) + 1];
    expect(after('-accel')).toBe('tcg');
    expect(after('-m')).toBe('256');
    expect(after('-kernel')).toBe('/k/vmlinuz');
    expect(after('-initrd')).toBe('/k/initrd.gz');
    expect(after('-serial')).toBe('file:/tmp/s.log');
    expect(after('-cpu')).toBe('qemu64');
    expect(after('-append')?.split(' ')).toEqual(
      expect.arrayContaining(['console=ttyS0', 'ferry.wss=64', 'ferry.rate=1000', 'ferry.verify=500', 'ferry.seed=9', 'ferry.pattern=random']),
    );
  });
});
