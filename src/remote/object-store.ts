/**
 * The object store interface walcast offloads WAL through: a put streamed from a local file with a checksum the
 * server verifies, ranged gets, head, list and delete. `s3-object-store.ts` implements it with the AWS SDK; the
 * uploader, the segment cache and restore only see this interface (style anchor 3).
 */
import type { FileHandle } from 'node:fs/promises';

export interface ObjectInfo {
  readonly key: string;
  readonly sizeBytes: number;
}

export interface ObjectStore {
  /** A readable description for logs ("s3://bucket/prefix at http://…"). */
  readonly description: string;
  /** The full key of `relative` (e.g. "<tenant>/<timeline>/<segment>") under the configured prefix. */
  key(relative: string): string;
  /**
   * Uploads `sizeBytes` bytes of the file at `path` as `key`, streamed (never the whole file in memory), with a
   * checksum the server checks before it stores the object; an existing object is replaced (uploads are idempotent).
   * Rejects on any failure, including a checksum mismatch; the caller retries.
   */
  putFile(key: string, path: string, sizeBytes: number, signal?: AbortSignal): Promise<void>;
  /** Uploads a small object held in memory (metadata), with the same server-verified checksum. */
  putBytes(key: string, bytes: Buffer, signal?: AbortSignal): Promise<void>;
  /**
   * Bytes [start, start + length) of `key`; `length` is at least 1 (a caller's fixed read size: the size of an
   * object that may be rewritten is never taken from a HEAD for a later GET, which getObject avoids). Rejects with
   * ObjectNotFoundError when the key does not exist, and when the store answers more than `length` bytes. The
   * answer may be shorter than asked, empty when `start` is at or past the object's end: callers check.
   */
  getRange(key: string, start: number, length: number, signal?: AbortSignal): Promise<Buffer>;
  /**
   * Streams bytes [start, start + length) of `key` into the open file `file` at `filePosition` as they arrive
   * (never the whole range in memory) and answers how many were written; same rejections as getRange. A rejection
   * may leave part of the range written: the caller writes it again or discards the file.
   */
  getRangeToFile(key: string, start: number, length: number, file: FileHandle, filePosition: number, signal?: AbortSignal): Promise<number>;
  /** The whole of `key` in one GET, no HEAD first. Rejects with ObjectNotFoundError, and when it holds more than `maxBytes`. */
  getObject(key: string, maxBytes: number, signal?: AbortSignal): Promise<Buffer>;
  /** Size of `key`, or undefined when it does not exist. */
  head(key: string, signal?: AbortSignal): Promise<ObjectInfo | undefined>;
  /** Every key under `prefix` (paged internally), in lexical order. */
  list(prefix: string, signal?: AbortSignal): Promise<ObjectInfo[]>;
  /** Removes `key`; removing a missing key is not an error (S3 semantics). */
  delete(key: string, signal?: AbortSignal): Promise<void>;
  close(): void;
}

/** The store answered that the object does not exist: permanent, not retried. */
export class ObjectNotFoundError extends Error {
  constructor(readonly key: string, options?: { cause?: unknown }) {
    super(`object ${key} does not exist`, options);
    this.name = 'ObjectNotFoundError';
  }
}
