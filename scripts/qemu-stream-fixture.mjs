#!/usr/bin/env node
/**
 * Capture real QEMU migration streams for test/unit/qemu-stream.test.ts.
 *
 * For each variant, a tiny guest (q35, 16 MiB, no devices, TCG; it runs SeaBIOS, which finds
 * nothing to boot and idles) migrates to a real target QEMU `-incoming unix:` through a tee that
 * records the forward bytes of the main connection (the one opening with "QEVM"). The target
 * must load it (`completed` on both sides), so every fixture is a stream QEMU itself accepts.
 *
 *   precopy   return-path on                          (the design note's recommended set)
 *   postcopy  return-path + postcopy-ram, migrate-start-postcopy at once; guest paused (-S),
 *             so that SeaBIOS has not filled RAM and the fixture stays small
 *   multifd   return-path + multifd (2 channels), paused: the main channel only, which the
 *             reader refuses
 *
 * Usage: node scripts/qemu-stream-fixture.mjs [--out test/fixtures/qemu-stream] [variant…]
 * Writes <variant>.bin.gz. Needs qemu-system-x86_64 (10.0 was used for the committed files).
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';

const VARIANTS = {
  precopy: { caps: ['return-path'], postcopy: false },
  postcopy: { caps: ['return-path', 'postcopy-ram'], postcopy: true, paused: true },
  multifd: { caps: ['return-path', 'multifd'], postcopy: false, paused: true },
};

const args = process.argv.slice(2);
let outDir = 'test/fixtures/qemu-stream';
const wanted = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--out') outDir = args[++i];
  else wanted.push(args[i]);
}
const variants = wanted.length ? wanted : Object.keys(VARIANTS);

/** A minimal QMP client: enough for capabilities, migrate and polling query-migrate. */
async function qmp(sock) {
  for (let i = 0; ; i++) {
    try {
      const s = await new Promise((resolve, reject) => {
        const c = net.createConnection(sock);
        c.once('connect', () => resolve(c));
        c.once('error', reject);
      });
      let buf = '';
      const waiters = [];
      s.setEncoding('utf8');
      s.on('data', (d) => {
        buf += d;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          const msg = JSON.parse(line);
          if ('event' in msg) continue;
          waiters.shift()?.(msg);
        }
      });
      const reply = () => new Promise((r) => waiters.push(r));
      await reply(); // greeting
      const exec = async (execute, args) => {
        const p = reply();
        s.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + '\n');
        const m = await p;
        if (m.error) throw new Error(`${execute}: ${m.error.desc}`);
        return m.return;
      };
      await exec('qmp_capabilities');
      return { exec, close: () => s.destroy() };
    } catch (e) {
      if (i > 100) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

function startQemu(dir, name, extra) {
  const qmpSock = path.join(dir, `${name}.qmp`);
  const p = spawn(
    'qemu-system-x86_64',
    ['-M', 'q35', '-accel', 'tcg', '-m', '16', '-nodefaults', '-display', 'none', '-qmp', `unix:${qmpSock},server=on,wait=off`, ...extra],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  return { p, qmpSock };
}

/** A unix-socket tee: each accepted connection is paired with one to `target`; main-channel forward bytes are kept. */
function tee(listenPath, target) {
  const captured = [];
  const server = net.createServer((c) => {
    const t = net.createConnection(target);
    let main = null;
    const mine = [];
    c.on('data', (d) => {
      if (main === null) {
        main = d.length >= 4 && d.readUInt32BE(0) === 0x5145564d;
        if (main) captured.push(mine);
      }
      if (main) mine.push(Buffer.from(d));
      t.write(d);
    });
    c.on('end', () => t.end());
    t.on('data', (d) => c.write(d));
    t.on('end', () => c.end());
    c.on('error', () => t.destroy());
    t.on('error', () => c.destroy());
  });
  server.listen(listenPath);
  return { server, captured };
}

async function waitStatus(q, wanted, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await q.exec('query-migrate');
    if (wanted.includes(r.status)) return r.status;
    if (r.status === 'failed') throw new Error(`migration failed: ${r['error-desc'] ?? ''}`);
    if (Date.now() > deadline) throw new Error(`migration still ${r.status}`);
    await new Promise((res) => setTimeout(res, 100));
  }
}

async function capture(variant) {
  const v = VARIANTS[variant];
  if (!v) throw new Error(`unknown variant ${variant} (${Object.keys(VARIANTS).join(', ')})`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qemu-stream-fixture-'));
  const targetSock = path.join(dir, 'target.sock');
  const relaySock = path.join(dir, 'relay.sock');
  const src = startQemu(dir, 'source', v.paused ? ['-S'] : []);
  const dst = startQemu(dir, 'target', ['-incoming', 'defer']);
  try {
    const [qs, qt] = await Promise.all([qmp(src.qmpSock), qmp(dst.qmpSock)]);
    const caps = v.caps.map((capability) => ({ capability, state: true }));
    await qs.exec('migrate-set-capabilities', { capabilities: caps });
    await qt.exec('migrate-set-capabilities', { capabilities: caps });
    await qt.exec('migrate-incoming', { uri: `unix:${targetSock}` });
    const t = tee(relaySock, targetSock);
    if (!v.paused) await new Promise((r) => setTimeout(r, 500)); // let SeaBIOS run a little: pages get dirtied
    await qs.exec('migrate', { uri: `unix:${relaySock}` });
    if (v.postcopy) await qs.exec('migrate-start-postcopy');
    await waitStatus(qs, ['completed']);
    await waitStatus(qt, ['completed']);
    await new Promise((r) => setTimeout(r, 200));
    t.server.close();
    qs.close();
    qt.close();
    const bytes = Buffer.concat(t.captured[0] ?? []);
    const gz = zlib.gzipSync(bytes, { level: 9 });
    fs.mkdirSync(outDir, { recursive: true });
    const file = path.join(outDir, `${variant}.bin.gz`);
    fs.writeFileSync(file, gz);
    console.log(`${file}: ${bytes.length} bytes, ${gz.length} gzipped`);
  } finally {
    src.p.kill('SIGKILL');
    dst.p.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

for (const v of variants) await capture(v);
