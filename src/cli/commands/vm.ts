import { randomUUID } from 'node:crypto';
import { UsageError } from '../../common/errors';
import { CONTROL_QUEUE, HOST_ID_RE, VM_NAME_RE } from '../../common/names';
import { formatBytes, parseSize } from '../../common/units';
import { liveHosts, locateVm } from '../../client/migrations';
import { workloadNames } from '../../guest/workloads';
import { QEMU_WORKLOADS } from '../../hypervisor/qemu/driver';
import { int, parse, str } from '../args';
import { commonOptions, configFrom, connectClient, say } from '../context';

export const help =
  'ferry vm create <name> --host <id> --memory SIZE --workload W [--seed N] [--vcpus N] [--rate PAGES/S] · ferry vm attach <name> --host <id> --qmp SOCKET [--serial FILE] (a running QEMU, by its -qmp unix socket) · ferry vm list [--host id] [--json] · ferry vm destroy <name>';

export async function run(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const { values, positionals } = parse(rest, {
    ...commonOptions,
    host: { type: 'string' },
    memory: { type: 'string' },
    workload: { type: 'string' },
    seed: { type: 'string' },
    vcpus: { type: 'string' },
    rate: { type: 'string' },
    qmp: { type: 'string' },
    serial: { type: 'string' },
    json: { type: 'boolean' },
  });
  const cfg = configFrom(values);
  if (sub !== 'create' && sub !== 'attach' && sub !== 'list' && sub !== 'destroy') throw new UsageError(`vm: '${sub ?? ''}' is not one of create, attach, list, destroy`);
  const name = positionals[0];
  let createSpec: { host: string; spec: Record<string, unknown> } | null = null;
  if (sub !== 'list') {
    if (!name || !VM_NAME_RE.test(name)) throw new UsageError(`vm ${sub}: a VM name is required (letters, digits, . _ -)`);
  }
  if (sub === 'create') {
    const host = str(values.host);
    if (!host || !HOST_ID_RE.test(host)) throw new UsageError('--host: required, the host to create the VM on');
    const memoryBytes = parseSize(str(values.memory) ?? '256MiB', '--memory');
    const workload = str(values.workload) ?? 'memcached';
    const known = [...workloadNames(), ...Object.keys(QEMU_WORKLOADS)];
    if (!workload.startsWith('trace:') && !known.includes(workload)) {
      throw new UsageError(`--workload: '${workload}' is not one of ${workloadNames().join(', ')}, trace:<file> (emulated hosts) or ${Object.keys(QEMU_WORKLOADS).join(', ')} (QEMU hosts)`);
    }
    createSpec = {
      host,
      spec: {
        name,
        memoryBytes,
        workload,
        seed: int(values.seed, 'seed', 0, 0xffffffff) ?? 1,
        vcpus: int(values.vcpus, 'vcpus', 1, 64) ?? 1,
        rate: int(values.rate, 'rate', 0, 10_000_000),
      },
    };
  }
  let attach: { host: string; qmpPath: string; serialPath: string | null } | null = null;
  if (sub === 'attach') {
    const host = str(values.host);
    if (!host || !HOST_ID_RE.test(host)) throw new UsageError('--host: required, the QEMU host the guest runs on');
    const qmpPath = str(values.qmp);
    if (!qmpPath || !qmpPath.startsWith('/')) throw new UsageError('--qmp: required, the absolute path of the guest\'s QMP unix socket (-qmp unix:PATH,server=on,wait=off)');
    const serial = str(values.serial);
    if (serial !== undefined && !serial.startsWith('/')) throw new UsageError('--serial: an absolute path');
    attach = { host, qmpPath, serialPath: serial ?? null };
  }
  const { client, close } = await connectClient(cfg);
  try {
    if (sub === 'list') {
      const host = str(values.host);
      const { facts, errors } = await liveHosts(client);
      const rows = facts.filter((f) => !host || f.hostId === host).flatMap((f) => f.vms.map((v) => ({ ...v, host: f.hostId })));
      if (values.json) process.stdout.write(`${JSON.stringify({ vms: rows, unreachable: errors }, null, 2)}\n`);
      else {
        for (const v of rows) process.stdout.write(`${v.name}\t${v.host}\t${formatBytes(v.memoryBytes)}\t${v.workload}\t${v.state}\n`);
        for (const e of errors) say(`unreachable: ${e}`);
      }
      return 0;
    }
    if (createSpec) {
      const result = (await client.workflow.execute('vmCommandWorkflow', {
        taskQueue: CONTROL_QUEUE,
        workflowId: `vm-create-${name}-${randomUUID()}`,
        args: [{ host: createSpec.host, op: 'create', spec: createSpec.spec }],
      })) as { vm: unknown };
      if (values.json) process.stdout.write(`${JSON.stringify(result.vm, null, 2)}\n`);
      else say(`created ${name} on ${createSpec.host}`);
      return 0;
    }
    if (attach) {
      const result = (await client.workflow.execute('vmCommandWorkflow', {
        taskQueue: CONTROL_QUEUE,
        workflowId: `vm-attach-${name}-${randomUUID()}`,
        args: [{ host: attach.host, op: 'attach', name: name!, qmpPath: attach.qmpPath, serialPath: attach.serialPath }],
      })) as { vm: { memoryBytes: number } };
      if (values.json) process.stdout.write(`${JSON.stringify(result.vm, null, 2)}\n`);
      else say(`attached ${name} on ${attach.host} (${formatBytes(result.vm.memoryBytes)})`);
      return 0;
    }
    const where = await locateVm(client, name!);
    await client.workflow.execute('vmCommandWorkflow', {
      taskQueue: CONTROL_QUEUE,
      workflowId: `vm-destroy-${name}-${randomUUID()}`,
      args: [{ host: where.hostId, op: 'destroy', name: name! }],
    });
    say(`destroyed ${name} on ${where.hostId}`);
    return 0;
  } finally {
    await close();
  }
}
