/**
 * The error every session ends with when the server stops: PostgreSQL's backends end with FATAL 57P01
 * "terminating connection due to administrator command" on a smart or fast shutdown (postgres.c ProcessInterrupts,
 * ProcDiePending). Clients match on the SQLSTATE: pg_receivewal and walreceivers log it and reconnect later.
 */
import { WalcastError } from '../errors.js';

/** The text is PostgreSQL's (a contract: operators grep for it). */
export const ADMIN_SHUTDOWN_MESSAGE = 'terminating connection due to administrator command';

export function adminShutdownError(): WalcastError {
  return new WalcastError('WALCAST_ERR_SHUTDOWN', ADMIN_SHUTDOWN_MESSAGE);
}
