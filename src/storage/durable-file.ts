/**
 * Replacing a small file atomically and durably, the one way walcast's metadata files are written (control file,
 * slot file, history files): write a temp file beside it, fsync it, rename it over the old one, fsync the directory.
 * A reader sees the old file or the new one, never a mix, and after the directory fsync a crash keeps the new one.
 * On failure (ENOSPC, EIO, EROFS ...) the temp file is removed before the error is thrown, so a full disk leaves no
 * stray temp file behind, and the old file stays in place.
 */
import { open, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';

export interface ReplaceFileOptions {
  /** The temp file's name in the same directory (same file system, so the rename is atomic). */
  readonly tempName: string;
  /** Runs after the temp file is durable and before the rename: the failpoint hook of the kill -9 tests. */
  readonly beforeRename?: () => void;
}

export async function replaceFileDurably(dir: string, name: string, bytes: Buffer, options: ReplaceFileOptions): Promise<void> {
  const tempPath = join(dir, options.tempName);
  try {
    await writeFileSynced(tempPath, bytes, 'w');
    options.beforeRename?.();
    await rename(tempPath, join(dir, name));
  } catch (error) {
    await unlink(tempPath).catch(() => undefined);
    throw error;
  }
  await fsyncDirectory(dir);
}

/**
 * Writes `bytes` to `path` (owner-only) and fsyncs the file; `flag` 'wx' refuses an existing file. Its directory entry
 * is durable only after the directory is fsynced too (fsyncDirectory).
 */
export async function writeFileSynced(path: string, bytes: Buffer, flag: 'w' | 'wx'): Promise<void> {
  const handle = await open(path, flag, 0o600);
  try {
    await handle.writeFile(bytes);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Makes a rename or unlink in `dir` durable (the entry itself lives in the directory). */
export async function fsyncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
