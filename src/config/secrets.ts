/**
 * Reading secrets (the replication password, the HTTP bearer token) from a file or an environment variable.
 * Never from the command line: argv is visible to every user of the machine through ps and /proc.
 */
import { readFile } from 'node:fs/promises';
import { WalcastError } from '../errors.js';

/** Secrets larger than this are not passwords: refuse them rather than hash a stray file. */
export const SECRET_FILE_MAX_BYTES = 4096;

export async function readSecret(options: { file: string | undefined; envName: string; what: string }): Promise<string | undefined> {
  if (options.file !== undefined) {
    let text: string;
    try {
      const bytes = await readFile(options.file);
      if (bytes.length > SECRET_FILE_MAX_BYTES) throw new Error(`larger than ${SECRET_FILE_MAX_BYTES} bytes`);
      text = bytes.toString('utf8');
    } catch (cause) {
      throw new WalcastError('WALCAST_ERR_CONFIG', `cannot read the ${options.what} file ${options.file}: ${(cause as Error).message}`, { cause });
    }
    // A trailing newline is an artifact of `echo secret > file`, never part of the secret.
    const secret = text.replace(/\r?\n$/, '');
    if (secret.length === 0) throw new WalcastError('WALCAST_ERR_CONFIG', `the ${options.what} file ${options.file} is empty`);
    return secret;
  }
  const fromEnv = process.env[options.envName];
  return fromEnv === undefined || fromEnv === '' ? undefined : fromEnv;
}
