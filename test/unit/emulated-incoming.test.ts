/** The target's incoming memory: fresh (all zeros, so the merge may skip zero pages) only when allocated for this attempt. */
import { describe, expect, it } from 'vitest';
import { EmulatedDriver } from '../../src/hypervisor/emulated';

const spec = { name: 'vm-z', memoryBytes: 64 * 4096, vcpus: 1, workload: 'idle', seed: 0 };

describe('EmulatedDriver.reserveIncoming', () => {
  it('is fresh when allocated, not when an earlier attempt reserved it (it may hold that attempt’s pages)', () => {
    const d = new EmulatedDriver({ hostId: 'h' });
    const first = d.reserveIncoming(spec, 4096);
    expect(first.fresh).toBe(true);
    expect(first.memory.page(5).every((b) => b === 0)).toBe(true);
    first.memory.writePage(5, new Uint8Array(4096).fill(7));
    const again = d.reserveIncoming(spec, 4096);
    expect(again.fresh).toBe(false);
    expect(again.memory).toBe(first.memory);
    d.dropIncoming(spec.name);
    const after = d.reserveIncoming(spec, 4096);
    expect(after.fresh).toBe(true);
    expect(after.memory.page(5).every((b) => b === 0)).toBe(true);
  });
});
