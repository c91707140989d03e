/**
 * Reading WAL segment files in bounded pieces for validation: a `WalSegmentSource` maps a segment number to a
 * file and reads byte ranges of it into a caller's buffer. Keeps one descriptor open (the segment being read),
 * so a walk over a thousand segments holds one fd, not a thousand.
 */
import assert from 'node:assert/strict';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { PARTIAL_SUFFIX, segmentFileName } from './segment-name.js';

/** Where validation reads segment bytes from: files in a directory, or a fake in tests. */
export interface WalSegmentSource {
  /**
   * Reads up to `length` bytes of segment `segno` starting at `fileOffset` into `target[0, length)`. Resolves
   * the bytes read (fewer, or 0, past the end of a short file), or undefined when the segment is not held.
   */
  readSegment(segno: bigint, fileOffset: number, target: Buffer, length: number): Promise<number | undefined>;
  close(): Promise<void>;
}

/** A source over files: `candidatePaths(segno)` lists the paths to try in order (e.g. NAME.partial, then NAME). */
export class FileSegmentSource implements WalSegmentSource {
  private current: { segno: bigint; handle: FileHandle } | undefined;

  constructor(private readonly candidatePaths: (segno: bigint) => readonly string[]) {}

  async readSegment(segno: bigint, fileOffset: number, target: Buffer, length: number): Promise<number | undefined> {
    assert.ok(fileOffset >= 0, 'file offset is not negative');
    assert.ok(length <= target.length, 'the read fits the target buffer');
    const handle = await this.handleFor(segno);
    if (handle === undefined) return undefined;
    let filled = 0;
    while (filled < length) {
      const { bytesRead } = await handle.read(target, filled, length - filled, fileOffset + filled);
      if (bytesRead === 0) break;
      filled += bytesRead;
    }
    return filled;
  }

  async close(): Promise<void> {
    const current = this.current;
    this.current = undefined;
    await current?.handle.close();
  }

  private async handleFor(segno: bigint): Promise<FileHandle | undefined> {
    if (this.current?.segno === segno) return this.current.handle;
    await this.close();
    for (const path of this.candidatePaths(segno)) {
      try {
        const handle = await open(path, 'r');
        this.current = { segno, handle };
        return handle;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      }
    }
    return undefined;
  }
}

/** A source over a walcast timeline directory or a pg_wal-like directory: NAME.partial first, then NAME. */
export function directorySegmentSource(dir: string, pgTimelineId: number, segmentBytes: number): FileSegmentSource {
  return new FileSegmentSource((segno) => {
    const name = segmentFileName(pgTimelineId, segno, segmentBytes);
    return [join(dir, name + PARTIAL_SUFFIX), join(dir, name)];
  });
}
