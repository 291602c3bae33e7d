/**
 * Channel-2, the migration network: one TCP (optionally mutual-TLS) connection per
 * migration between the source agent (client, PageChannel.connect) and the target agent
 * (PageChannelServer, one listener per agent process, many migrations). This module only
 * re-exports the public names; the code is in:
 *
 *   channel-options.ts     option, handler and statistics types; option checks
 *   channel-handshake.ts   HELLO/CHALLENGE/AUTH/WELCOME: mutual HMAC proofs over fresh nonces
 *   channel-connection.ts  PageChannel: one authenticated connection (API, receiving, barriers, close)
 *   channel-lanes.ts       its sending side: priority and bulk lanes, rate cap, frame-buffer pool
 *   channel-server.ts      PageChannelServer and its registry of expected migrations
 *
 * Wire format: frame.ts and codec.ts; TLS: tls.ts; the rate cap's clock: clock.ts.
 */
export type { Lane } from './codec';
export type { Clock } from './clock';
export type { Address, ChannelHandlers, ChannelStats, ConnectOptions, LaneStats, SenderOptions } from './channel-options';
export { clientHandshake } from './channel-handshake';
export { PageChannel } from './channel-connection';
export { PageChannelServer, type ExpectOptions, type ListenOptions, type Registration } from './channel-server';
export { AuthError, ChannelClosedError, ChannelError, FrameError, RemoteError } from './frame';
