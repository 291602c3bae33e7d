/** The ferry command against a real server and real agents, as an operator would use it. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FerryProcess } from '../../src/support/processes';
import type { MigrationReport } from '../../src/workflows/report';
import { startAgentProcess, startTestController, tempDir, uniqueHost, type TestController } from '../helpers/cluster';
import { ferry } from '../helpers/ferry-cli';


let controller: TestController;
const agents: FerryProcess[] = [];
const hostA = uniqueHost('cli-a');
const hostB = uniqueHost('cli-b');
const storage = tempDir('cli-storage');

beforeAll(async () => {
  const [c, a, b] = await Promise.all([
    startTestController(),
    startAgentProcess(hostA, { storageDir: storage, memoryCapacity: '1GiB' }),
    startAgentProcess(hostB, { storageDir: storage, memoryCapacity: '1GiB' }),
  ]);
  controller = c;
  agents.push(a, b);
});

afterAll(async () => {
  await Promise.all(agents.map((a) => a.stop()));
  await controller?.stop();
});

describe('ferry CLI', () => {
  it('vm create, vm list, migrate --wait --json, report, status', async () => {
    const create = await ferry('vm', 'create', 'cli-vm', '--host', hostA, '--memory', '32MiB', '--workload', 'kernel-compile', '--seed', '9');
    expect(create.stderr).toContain(`created cli-vm on ${hostA}`);
    expect(create.code).toBe(0);

    const list = await ferry('vm', 'list', '--host', hostA, '--json');
    expect(JSON.parse(list.stdout).vms).toEqual([expect.objectContaining({ name: 'cli-vm', host: hostA, state: 'running', memoryBytes: 32 * 1024 ** 2 })]);

    const tooBig = await ferry('vm', 'create', 'huge-vm', '--host', hostA, '--memory', '8GiB');
    expect(tooBig.code).toBe(1);
    expect(tooBig.stderr).toMatch(/host .* has \d+ bytes free, vm huge-vm needs/);

    const mig = await ferry('migrate', 'cli-vm', '--to', hostB, '--strategy', 'par-migrate', '--ticket', 'OPS-1', '--wait', '--json');
    expect(mig.code).toBe(0);
    const report = JSON.parse(mig.stdout) as MigrationReport;
    expect(report).toMatchObject({ vm: 'cli-vm', source: hostA, target: hostB, strategy: 'par-migrate', ticket: 'OPS-1', outcome: 'completed' });
    expect(report.verification?.ok).toBe(true);

    // The same ticket again is the same migration, not a second one.
    const again = await ferry('migrate', 'cli-vm', '--to', hostB, '--ticket', 'OPS-1', '--json');
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ created: false, runId: report.id.split('/')[1] });

    const rep = await ferry('report', 'cli-vm', '--json');
    expect(JSON.parse(rep.stdout).id).toBe(report.id);
    const text = await ferry('report', 'cli-vm');
    expect(text.stdout).toMatch(/outcome\s+completed/);
    expect(text.stdout).toMatch(/verified\s+ok on target/);

    const st = await ferry('status', 'cli-vm', '--json');
    expect(JSON.parse(st.stdout)).toMatchObject({ workflowId: 'migrate-cli-vm', status: 'COMPLETED' });

    const same = await ferry('migrate', 'cli-vm', '--to', hostB);
    expect(same.code).toBe(2);
    expect(same.stderr).toMatch(/already on/);

    const missing = await ferry('migrate', 'no-such-vm', '--to', hostB);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/vm no-such-vm is on no registered host/);
  }, 120_000);
});
