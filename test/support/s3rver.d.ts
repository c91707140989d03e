/** The part of s3rver 3.7's API the tests use (the package ships no types). */
declare module 's3rver' {
  import type { Server } from 'node:http';
  import type { AddressInfo } from 'node:net';

  interface S3rverOptions {
    address?: string;
    port?: number;
    silent?: boolean;
    directory: string;
    resetOnClose?: boolean;
    configureBuckets?: { name: string; configs: string[] }[];
  }

  /** s3rver's FilesystemStore: the part test/support/s3.ts wraps to make PUT atomic. */
  export interface S3rverStoredObject {
    readonly bucket: string;
    readonly key: string;
    readonly metadata: Record<string, string>;
    readonly content: Buffer | NodeJS.ReadableStream;
  }

  export interface S3rverFilesystemStore {
    getResourcePath(bucket: string, key: string, resource: 'object' | 'metadata.json' | 'object.md5'): string;
    putMetadata(bucket: string, key: string, metadata: Record<string, string>, md5: string): Promise<void>;
    putObject(object: S3rverStoredObject): Promise<{ size: number; md5: string }>;
    /** Answers once the object's metadata is read and its content stream is open (or null: no such key). */
    getObject(bucket: string, key: string, options?: { start?: number; end?: number }): Promise<unknown>;
  }

  export default class S3rver {
    constructor(options: S3rverOptions);
    readonly store: S3rverFilesystemStore;
    run(): Promise<AddressInfo>;
    close(): Promise<void>;
    httpServer: Server | undefined;
  }
}
