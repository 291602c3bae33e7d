/** The QEMU driver's pure parts: workloads of the test guest and attached command lines. */
import { describe, expect, it } from 'vitest';
import { resolveWorkload, stripOwnOptions } from '../../src/hypervisor/qemu/driver';
import { ramFilePath, shmRoom } from '../../src/hypervisor/qemu/ram-files';
import { qemuGuestArgs } from '../../src/hypervisor/qemu/guest-image';
import { shellQuote } from '../../src/hypervisor/qemu/host';

const MiB = 2 ** 20;

describe('resolveWorkload', () => {
  it('scales the working sets with memory, and a rate override wins', () => {
    expect(resolveWorkload({ workload: 'converging', memoryBytes: 256 * MiB })).toEqual({ wssMiB: 64, rate: 2048 });
    expect(resolveWorkload({ workload: 'write-intensive', memoryBytes: 256 * MiB })).toEqual({ wssMiB: 128, rate: 0, growKiBps: 4096, wss0MiB: 16 });
    expect(resolveWorkload({ workload: 'hot-set', memoryBytes: 1024 * MiB })).toEqual({ wssMiB: 512, rate: 0 });
    expect(resolveWorkload({ workload: 'converging', memoryBytes: 256 * MiB, rate: 500 }).rate).toBe(500);
  });

  it('refuses a workload the test guest does not have, naming those it has', () => {
    expect(() => resolveWorkload({ workload: 'memcached', memoryBytes: 256 * MiB })).toThrow(/unknown QEMU workload 'memcached' \(known: converging, write-intensive, hot-set, idle\)/);
  });
});

describe('stripOwnOptions', () => {
  it('drops the monitor, pidfile, serial, name, incoming and daemonize options ferry sets itself', () => {
    const argv = ['-machine', 'q35', '-name', 'web-1', '-m', '2048', '-qmp', 'unix:/run/q.sock,server=on,wait=off', '-daemonize', '-pidfile', '/run/q.pid', '-serial', 'file:/x', '-drive', 'file=/img.qcow2,if=virtio', '-S', '-monitor', 'stdio'];
    expect(stripOwnOptions(argv)).toEqual(['-machine', 'q35', '-m', '2048', '-drive', 'file=/img.qcow2,if=virtio']);
  });
});

describe('shellQuote', () => {
  it('quotes what a remote shell would split or expand', () => {
    expect(shellQuote(['qemu-system-x86_64', '-append', "console=ttyS0 ferry.wss=64", "it's"])).toBe(`qemu-system-x86_64 -append 'console=ttyS0 ferry.wss=64' 'it'\\''s'`);
    expect(shellQuote(['-qmp', 'unix:/tmp/a b/qmp.sock,server=on,wait=off'])).toBe(`-qmp 'unix:/tmp/a b/qmp.sock,server=on,wait=off'`);
  });
});

describe("an incoming guest's RAM file", () => {
  const img = { kernel: '/k', initrd: '/i' };
  const base = { memoryMiB: 256, wss: 64, rate: 0, verifyMs: 1000, seed: 1, serialLog: '/s.log' };

  it('backs pc.ram (the name -m gives it, so it migrates from and to -m guests) with a shared file', () => {
    const argv = qemuGuestArgs(img, { ...base, ramFile: '/dev/shm/ferry-ram-x' });
    expect(argv[argv.indexOf('-machine') + 1]).toBe('q35,memory-backend=pc.ram');
    expect(argv[argv.indexOf('-object') + 1]).toBe('memory-backend-file,id=pc.ram,size=256M,mem-path=/dev/shm/ferry-ram-x,share=on');
    expect(argv[argv.indexOf('-m') + 1]).toBe('256');
    const plain = qemuGuestArgs(img, base);
    expect(plain).not.toContain('-object');
    expect(plain[plain.indexOf('-machine') + 1]).toBe('q35');
  });

  it('is used only when tmpfs has room for it beside what the other RAM files will still take', () => {
    const GiB = 2 ** 30;
    // 8 GiB free, nothing promised: a 4 GiB guest fits, a 7.9 GiB one does not (256 MiB margin).
    expect(shmRoom({ freeBytes: 8 * GiB, promisedBytes: 0, heldBytes: 0, wantBytes: 4 * GiB })).toBe(true);
    expect(shmRoom({ freeBytes: 8 * GiB, promisedBytes: 0, heldBytes: 0, wantBytes: 7.9 * GiB })).toBe(false);
    // A guest promised 6 GiB holds only 1 GiB yet (tmpfs allocates as pages are loaded): 5 GiB of the free space is taken.
    expect(shmRoom({ freeBytes: 8 * GiB, promisedBytes: 6 * GiB, heldBytes: 1 * GiB, wantBytes: 4 * GiB })).toBe(false);
    expect(shmRoom({ freeBytes: 8 * GiB, promisedBytes: 6 * GiB, heldBytes: 6 * GiB, wantBytes: 4 * GiB })).toBe(true);
  });

  it('is named after the VM directory, on tmpfs: one per VM and agent, found again after a restart', () => {
    const a = ramFilePath('/var/lib/ferry/a/web-1');
    expect(a).toMatch(/^\/dev\/shm\/ferry-ram-[0-9a-f]{20}$/);
    expect(ramFilePath('/var/lib/ferry/a/web-1/')).toBe(a);
    expect(ramFilePath('/var/lib/ferry/b/web-1')).not.toBe(a);
  });
});
