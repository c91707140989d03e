/**
 * Maps what the wire layer parsed during COPY BOTH to what the reply reader understands. PostgreSQL accepts only
 * CopyData, CopyDone, CopyFail and Terminate from a replica while it streams (walsender.c ProcessRepliesIfAny);
 * everything else is a protocol violation that ends the stream.
 */
import { describeClientByte } from '../wire/client-text.js';
import type { FrontendMessage } from '../wire/messages.js';
import type { StreamInput } from './reply-reader.js';

export function toStreamInput(message: FrontendMessage): StreamInput {
  switch (message.type) {
    case 'copyData':
      return { kind: 'copy_data', payload: message.payload };
    case 'copyDone':
      return { kind: 'copy_done' };
    case 'copyFail':
      return { kind: 'copy_fail', message: message.message };
    case 'terminate':
      return { kind: 'terminate' };
    case 'query':
      return { kind: 'unexpected', description: 'Query' };
    case 'sync':
    case 'flush':
    case 'password':
      return { kind: 'unexpected', description: message.type };
    case 'other':
      return { kind: 'unexpected', description: `message type ${describeClientByte(message.code)}` };
  }
}
