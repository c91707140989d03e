/**
 * The reply reader: the seed's ReplyReader. While a sender streams WAL, this half consumes what the replica
 * sends on the same connection: standby status ('r'), hot-standby feedback ('h') and Neon pageserver feedback
 * ('z') go to the replica registry; a status update that asks for a reply gets a keepalive at once; CopyDone
 * ends the stream gracefully; anything else, or silence longer than the replica timeout, ends it with an error.
 *
 * It owns no socket: the session feeds it messages and learns from `ended` how the replica ended the stream.
 */
import assert from 'node:assert/strict';
import { WalcastError } from '../errors.js';
import { decodeFeedback, type Feedback } from './feedback.js';

/** What the session hands the reply reader: the frontend messages that are legal during COPY BOTH. */
export type StreamInput =
  | { readonly kind: 'copy_data'; readonly payload: Buffer }
  | { readonly kind: 'copy_done' }
  | { readonly kind: 'copy_fail'; readonly message: string }
  | { readonly kind: 'terminate' }
  | { readonly kind: 'disconnected' }
  | { readonly kind: 'unexpected'; readonly description: string };

/** How the replica side ended a stream. `error` ones are reported to the replica, if it is still there. */
export type ReplicaEnd =
  | { readonly kind: 'copy_done' }
  | { readonly kind: 'copy_fail'; readonly message: string }
  | { readonly kind: 'terminate' }
  | { readonly kind: 'disconnected' }
  | { readonly kind: 'error'; readonly error: WalcastError };

export interface FeedbackSink {
  update(feedback: Feedback): void;
}

export interface ReplyReaderOptions {
  readonly sink: FeedbackSink;
  /** Called when a standby status update sets replyRequested: the sender must send a keepalive now. */
  readonly onReplyRequested: () => void;
  /** No message at all from the replica for this long ends the stream (PostgreSQL's wal_sender_timeout). */
  readonly replicaTimeoutMs: number;
}

export class ReplyReader {
  /** Settles once, with the first way the replica ended the stream. */
  readonly ended: Promise<ReplicaEnd>;
  private settle: (end: ReplicaEnd) => void = () => undefined;
  private done = false;
  private lastMessageAtMs = Date.now();
  private readonly timer: NodeJS.Timeout;
  private readonly options: ReplyReaderOptions;

  constructor(options: ReplyReaderOptions) {
    assert.ok(options.replicaTimeoutMs > 0);
    this.options = options;
    this.ended = new Promise<ReplicaEnd>((resolve) => {
      this.settle = resolve;
    });
    // Checking at a quarter of the timeout bounds the overshoot to 25% without a timer per message.
    const checkEveryMs = Math.max(10, Math.floor(options.replicaTimeoutMs / 4));
    this.timer = setInterval(() => this.checkTimeout(), checkEveryMs);
    this.timer.unref();
  }

  handle(input: StreamInput): void {
    if (this.done) return;
    this.lastMessageAtMs = Date.now();
    switch (input.kind) {
      case 'copy_data':
        this.handleCopyData(input.payload);
        return;
      case 'copy_done':
      case 'terminate':
      case 'disconnected':
        this.finish({ kind: input.kind });
        return;
      case 'copy_fail':
        this.finish({ kind: 'copy_fail', message: input.message });
        return;
      case 'unexpected':
        this.finish({ kind: 'error', error: new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', `unexpected message during replication: ${input.description}`) });
        return;
    }
  }

  /** When the replica last sent any message (Date.now() milliseconds); the stream's start before the first one. */
  lastMessageAt(): number {
    return this.lastMessageAtMs;
  }

  /** Stops the timeout timer; the session calls this when the stream ends for any reason. */
  stop(): void {
    this.finish({ kind: 'disconnected' });
  }

  private handleCopyData(payload: Buffer): void {
    const decoded = decodeFeedback(payload);
    if (decoded instanceof WalcastError) {
      this.finish({ kind: 'error', error: decoded });
      return;
    }
    this.options.sink.update(decoded);
    if (decoded.kind === 'standby_reply' && decoded.replyRequested) this.options.onReplyRequested();
  }

  private checkTimeout(): void {
    const silentMs = Date.now() - this.lastMessageAtMs;
    if (silentMs < this.options.replicaTimeoutMs) return;
    this.finish({
      kind: 'error',
      error: new WalcastError('WALCAST_ERR_REPLICA_TIMEOUT', `terminating walsender process due to replication timeout (no message for ${silentMs} ms)`),
    });
  }

  private finish(end: ReplicaEnd): void {
    if (this.done) return;
    this.done = true;
    clearInterval(this.timer);
    this.settle(end);
  }
}
