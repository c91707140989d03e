/**
 * The file range types storage hands out for sending: an open segment file and a byte range of it. The I/O
 * backend (io/backend.ts) sends or prefetches these ranges; storage opens and closes the files.
 */

/** A WAL segment file opened read-only by storage. The backend reads or sends from `fd`; storage closes it. */
export interface WalFileHandle {
  readonly fd: number;
  readonly path: string;
  /** "dev:ino" of the file, when storage knows it: caches keyed by file survive a rename and see a replacement. */
  readonly identity?: string;
  /**
   * True once storage has started closing `fd`; absent when the creator keeps the file open for as long as the handle
   * is used. The number may then belong to anything the process opens next (a client's socket), so nothing may read,
   * send or prefetch through it: a prefetch READ of a reused number once swallowed a new client's startup packet.
   */
  readonly closed?: boolean;
}

/** A byte range of one segment file. A chunk never crosses a segment boundary. */
export interface WalChunk {
  readonly file: WalFileHandle;
  /** Offset of the first byte inside the segment file. */
  readonly fileOffset: number;
  /**
   * At least 1. For sendChunk at most MAX_SEND_BYTES; for prefetch a whole window (up to PREFETCH_WINDOW_BYTES,
   * cut at the segment end), which backends split into reads of their own size.
   */
  readonly byteCount: number;
}
