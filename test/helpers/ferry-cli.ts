/** The `ferry` command as an operator runs it, against the test suite's Temporal server. */
import { spawn } from 'node:child_process';
import { FERRY_BIN } from '../../src/support/processes';
import { temporalAddress } from './cluster';

export function ferry(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [FERRY_BIN, ...args], { env: { ...process.env, FERRY_TEMPORAL_ADDRESS: temporalAddress() } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}
