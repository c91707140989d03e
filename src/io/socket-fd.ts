/**
 * The descriptor behind a Node socket, for the native calls that work on it (the engine's streams, TCP_CONGESTION).
 * Node exposes no public accessor; libuv's handle carries it for TCP and pipe sockets.
 */
import type { Socket } from 'node:net';

/** The socket's descriptor, or undefined when it has none libuv exposes (not a TCP/pipe socket, or closed). */
export function socketFd(socket: Socket): number | undefined {
  const handle = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle;
  const fd = handle?.fd;
  return typeof fd === 'number' && Number.isInteger(fd) && fd >= 0 ? fd : undefined;
}
