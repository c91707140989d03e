/**
 * The error every session ends with when the server stops: PostgreSQL's backends end with FATAL 57P01
 * "terminating connection due to administrator command" on a smart or fast shutdown (postgres.c ProcessInterrupts,
 * ProcDiePending). Clients match on the SQLSTATE: pg_receivewal and walreceivers log it and reconnect later.
 * When the server aborts a session's signal with a WalcastError as the reason, the session ends with that error
 * instead (the connections of a timeline being removed get 57P04; see stopErrorOf).
 */
import { WalcastError } from '../errors.js';

/** The text is PostgreSQL's (a contract: operators grep for it). */
export const ADMIN_SHUTDOWN_MESSAGE = 'terminating connection due to administrator command';

export function adminShutdownError(): WalcastError {
  return new WalcastError('WALCAST_ERR_SHUTDOWN', ADMIN_SHUTDOWN_MESSAGE);
}

/**
 * Why a session's stop signal fired: the WalcastError it was aborted with (the server ends the connections of a
 * timeline being removed with WALCAST_ERR_TIMELINE_REMOVED), else the server is shutting down.
 */
export function stopErrorOf(signal: AbortSignal): WalcastError {
  const reason: unknown = signal.reason;
  return reason instanceof WalcastError ? reason : adminShutdownError();
}
