/** The relays' link (loopback TCP): the stream's connection, then the preempt channel's and PbData's acknowledgements', each once. */
import type net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { connectRelay, listenRelay, newRelayToken, splice, type RelayChannel, type RelayListener } from '../../src/hypervisor/qemu/relay/link';

const opened: (RelayListener | net.Socket)[] = [];
afterEach(() => {
  for (const x of opened.splice(0)) 'destroy' in x ? x.destroy() : x.close();
});

async function setUp(): Promise<{ listener: RelayListener; connect: (channel?: RelayChannel, token?: string) => Promise<net.Socket> }> {
  const token = newRelayToken();
  const listener = await listenRelay({ host: '127.0.0.1', migrationId: 'm-link', token });
  opened.push(listener);
  const connect = async (channel: RelayChannel = 'main', t = token) => {
    const s = await connectRelay({ host: '127.0.0.1', port: listener.address.port, migrationId: 'm-link', token: t, targetHostId: 'target', channel });
    opened.push(s);
    return s;
  };
  return { listener, connect };
}

describe('relay link: main and preempt channels', () => {
  it('accepts the stream, then its preempt channel, and hands each out once', async () => {
    const { listener, connect } = await setUp();
    const [main, preempt] = [await connect('main'), await connect('preempt')];
    const [m, p] = [await listener.accepted, await listener.preempt];
    opened.push(m, p);
    main.write('stream');
    preempt.write('urgent');
    // Both ends come paused (the hello was read): the reader resumes them.
    const read = (s: net.Socket) => new Promise<string>((r) => s.once('data', (d: Buffer) => r(d.toString())).resume());
    expect(await Promise.all([read(m), read(p)])).toEqual(['stream', 'urgent']);
    expect(listener.refusals).toEqual([]);
  });

  it('refuses a preempt channel before the stream, a second stream, and a wrong token, naming why', async () => {
    const { listener, connect } = await setUp();
    await expect(connect('preempt')).rejects.toThrow(/refused: a preempt channel before the stream/);
    await connect('main');
    await expect(connect('main')).rejects.toThrow(/refused: this migration's main channel is already connected/);
    await expect(connect('preempt', newRelayToken())).rejects.toThrow(/refused: a relay hello for another migration or with a wrong token/);
    expect(listener.refusals).toHaveLength(3);
    await connect('preempt'); // the right one still gets in
    opened.push(await listener.preempt);
  });

  it("PbData's acknowledgement channel: refused before the stream and a second time; the target's counts reach the source", async () => {
    const { listener, connect } = await setUp();
    await expect(connect('ack')).rejects.toThrow(/refused: an ack channel before the stream/);
    await connect('main');
    const ack = await connect('ack');
    await expect(connect('ack')).rejects.toThrow(/refused: this migration's ack channel is already connected/);
    const a = await listener.acks;
    opened.push(a);
    a.write('256\n512\n');
    let got = '';
    await new Promise<void>((r) => {
      ack.on('data', (d: Buffer) => {
        got += d.toString();
        if (got.endsWith('512\n')) r();
      });
      ack.resume();
    });
    expect(got).toBe('256\n512\n');
    expect(listener.refusals).toHaveLength(2);
  });

  it('splice carries bytes both ways untouched and counts them; a failure on one side closes the other', async () => {
    const { listener, connect } = await setUp();
    const [a, b] = [await connect('main'), await connect('preempt')];
    const [a2, b2] = [await listener.accepted, await listener.preempt];
    opened.push(a2, b2);
    // a2 ⇄ b2 spliced: what the far end of a writes arrives at the far end of b, and back.
    const counted = { to: 0, from: 0 };
    const errors: string[] = [];
    splice(a2, b2, { toLink: (n) => (counted.to += n), fromLink: (n) => (counted.from += n), onError: (e) => errors.push(e.message) });
    const got = (s: net.Socket, n: number) =>
      new Promise<Buffer>((r) => {
        const parts: Buffer[] = [];
        s.on('data', (d: Buffer) => {
          parts.push(d);
          if (Buffer.concat(parts).length >= n) r(Buffer.concat(parts));
        });
        s.resume();
      });
    const payload = Buffer.alloc(256 * 1024, 7);
    const atB = got(b, payload.length);
    a.write(payload);
    expect((await atB).equals(payload)).toBe(true);
    const atA = got(a, 5);
    b.write('reply');
    expect((await atA).toString()).toBe('reply');
    expect(counted).toEqual({ to: payload.length, from: 5 });
    const closed = new Promise<void>((r) => b.once('close', () => r()));
    a2.destroy(new Error('boom'));
    await closed;
    expect(errors).toEqual(['the QEMU side: boom']);
  });
});
