/**
 * Load-time checks of the admission settings, so an out-of-range flag is a clear startup error (WALCAST_ERR_CONFIG
 * naming the flag and its range) and never an assertion later. The ceilings come from config/limits.ts.
 */
import { STARTUP_CONNECTIONS_MAX, checkMaxConnections, checkRange } from '../config/limits.js';
import { WalcastError } from '../errors.js';
import { AUTHENTICATION_TIMEOUT_MS_DEFAULT, STARTUP_CONNECTIONS_DEFAULT, STARTUP_CONNECTIONS_PER_ADDRESS_DEFAULT, type AdmissionLimits } from './admission.js';

/** The longest startup deadline accepted: PostgreSQL's authentication_timeout allows at most 600 s. */
export const AUTHENTICATION_TIMEOUT_MS_MAX = 600_000;

export interface AdmissionSettings {
  readonly maxConnections: number;
  readonly maxStartupConnections?: number | undefined;
  readonly maxStartupConnectionsPerAddress?: number | undefined;
  readonly authenticationTimeoutMs?: number | undefined;
}

export interface ResolvedAdmission {
  readonly limits: AdmissionLimits;
  readonly authenticationTimeoutMs: number;
}

/**
 * Checks every setting against its range and fills in defaults. The per-address default is capped at the startup
 * pool, so lowering only `--max-startup-connections` stays valid; setting both inconsistently is refused.
 */
export function resolveAdmission(settings: AdmissionSettings): ResolvedAdmission {
  const maxConnections = checkMaxConnections(settings.maxConnections);
  const startup = checkRange(settings.maxStartupConnections ?? STARTUP_CONNECTIONS_DEFAULT, 1, STARTUP_CONNECTIONS_MAX, '--max-startup-connections');
  const perAddress = checkRange(
    settings.maxStartupConnectionsPerAddress ?? Math.min(STARTUP_CONNECTIONS_PER_ADDRESS_DEFAULT, startup),
    1,
    STARTUP_CONNECTIONS_MAX,
    '--max-startup-connections-per-address',
  );
  if (perAddress > startup) {
    throw new WalcastError('WALCAST_ERR_CONFIG', `--max-startup-connections-per-address (${perAddress}) must not exceed --max-startup-connections (${startup})`);
  }
  const authenticationTimeoutMs = checkRange(settings.authenticationTimeoutMs ?? AUTHENTICATION_TIMEOUT_MS_DEFAULT, 1, AUTHENTICATION_TIMEOUT_MS_MAX, '--authentication-timeout');
  return { limits: { maxConnections, maxStartupConnections: startup, maxStartupConnectionsPerAddress: perAddress }, authenticationTimeoutMs };
}
