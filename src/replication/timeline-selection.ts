/**
 * Which timeline a connection talks to. Neon's compute and pageserver name it in the startup `options`
 * (`-c tenant_id=… timeline_id=…`, or the older `ztenantid`/`ztimelineid`); plain PostgreSQL clients cannot, so
 * a data directory that holds exactly one timeline serves it to everyone by default.
 */
import { WalcastError } from '../errors.js';
import { quoteClientText } from '../wire/client-text.js';

export interface TimelineKey {
  readonly tenantId: string;
  readonly timelineId: string;
}

const TENANT_KEYS = ['tenant_id', 'ztenantid'] as const;
const TIMELINE_KEYS = ['timeline_id', 'ztimelineid'] as const;
const ID_PATTERN = /^[0-9a-f]{32}$/;

function firstOf(options: ReadonlyMap<string, string>, keys: readonly string[]): string | undefined {
  for (const key of keys) {
    const value = options.get(key);
    if (value !== undefined) return value;
  }
  return undefined;
}

/**
 * Returns the timeline named in `options`, or `defaultKey` when none is named, or undefined when there is no
 * choice to make (a command that needs a timeline then fails with WALCAST_ERR_NO_TIMELINE).
 */
export function selectTimeline(options: ReadonlyMap<string, string>, defaultKey: TimelineKey | undefined): TimelineKey | undefined {
  const tenantId = firstOf(options, TENANT_KEYS)?.toLowerCase();
  const timelineId = firstOf(options, TIMELINE_KEYS)?.toLowerCase();
  if (tenantId === undefined && timelineId === undefined) return defaultKey;
  if (tenantId === undefined || timelineId === undefined) {
    throw new WalcastError('WALCAST_ERR_INVALID_STARTUP_PARAMETER', 'options must name both tenant_id and timeline_id, or neither');
  }
  for (const [name, value] of [['tenant_id', tenantId], ['timeline_id', timelineId]] as const) {
    if (!ID_PATTERN.test(value)) {
      throw new WalcastError('WALCAST_ERR_INVALID_STARTUP_PARAMETER', `invalid value for ${name}: ${quoteClientText(value)} (expected 32 hex digits)`);
    }
  }
  return { tenantId, timelineId };
}
