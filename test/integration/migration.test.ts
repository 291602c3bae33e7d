import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FerryProcess } from '../../src/support/processes';
import { createVm, migrate, MiB } from '../helpers/migrate';
import { startAgentProcess, startTestController, tempDir, uniqueHost, type TestController } from '../helpers/cluster';

describe('migration workflow on real agents', () => {
  let controller: TestController;
  const agents: FerryProcess[] = [];
  const hostA = uniqueHost('mig-a');
  const hostB = uniqueHost('mig-b');
  const storage = tempDir('mig-storage');

  beforeAll(async () => {
    const [c, a, b] = await Promise.all([
      startTestController(),
      startAgentProcess(hostA, { storageDir: storage, memoryCapacity: '2GiB' }),
      startAgentProcess(hostB, { storageDir: storage, memoryCapacity: '2GiB' }),
    ]);
    controller = c;
    agents.push(a, b);
  });

  afterAll(async () => {
    await Promise.all(agents.map((a) => a.stop()));
    await controller?.stop();
  });

  it('pa-hybrid moves a memcached guest and verifies it', async () => {
    const vm = `vm-pa-${Date.now()}`;
    await createVm(controller.client, hostA, { name: vm, memoryBytes: 64 * MiB, workload: 'memcached', seed: 7 });
    const report = await migrate(controller.client, { vm, source: hostA, target: hostB, strategy: 'pa-hybrid', options: { digest: true } });
    console.log(JSON.stringify({ ...report, iterations: report.iterations.length, decisions: report.decisions.slice(-2) }, null, 1));
    expect(report.outcome).toBe('completed');
    expect(report.verification?.ok).toBe(true);
  }, 120_000);
});
