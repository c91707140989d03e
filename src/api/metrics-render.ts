/**
 * The Prometheus text exposition of a prom-client Registry, rendered in slices of the event loop. A scrape runs on
 * the thread that publishes commits to replicas, so every commit that arrives during it waits for it (issue 13);
 * prom-client's registry.metrics() renders everything in one go (about 70 ms with 1,000 replicas connected, measured
 * by bench/metrics-render.ts). Here the render gives the loop a turn (setImmediate) whenever it has run for
 * METRICS_RENDER_SLICE_MS since the last turn, checking between metric families and every RENDER_ROWS_PER_CHECK
 * rows of a sliced family, so a scrape delays a commit by about that bound, whatever the replica count.
 *
 * The text is what registry.metrics() writes (same HELP/TYPE lines, label order, value spelling, families in
 * registration order separated by a blank line); families that implement SlicedFamily write their own rows.
 */
import type { Registry } from 'prom-client';

/** Longest stretch a /metrics render runs before yielding an event-loop turn (checked, so overshoot is one step). */
export const METRICS_RENDER_SLICE_MS = 1;
/** Rows written between clock reads in a sliced family (a row costs well under a microsecond to a few). */
export const RENDER_ROWS_PER_CHECK = 64;

/** Gives the event loop a turn when the current slice has run out; counts the turns given (tests read it). */
export class RenderSlicer {
  private sliceStart = performance.now();
  yields = 0;

  constructor(private readonly sliceMs: number = METRICS_RENDER_SLICE_MS) {}

  /** Resolves at once within the slice; after a setImmediate turn once it is spent. */
  async maybeYield(): Promise<void> {
    if (performance.now() - this.sliceStart < this.sliceMs) return;
    await new Promise<void>((resolve) => setImmediate(resolve));
    this.yields++;
    this.sliceStart = performance.now();
  }
}

/** A metric that writes its own exposition rows, sliced; registered in the Registry like any metric. */
export interface SlicedFamily {
  readonly name: string;
  /** The rows of this family (no HELP/TYPE lines) as strings of one or more rows joined by newlines, none ending in one. */
  renderRows(slicer: RenderSlicer): Promise<string[]>;
}

interface FamilyValue {
  readonly metricName?: string;
  readonly labels?: Readonly<Record<string, string | number>>;
  readonly value: number;
}
interface FamilyObject {
  readonly name: string;
  readonly help: string;
  readonly type: string;
  readonly values?: readonly FamilyValue[];
}
interface RegisteredMetric {
  readonly name: string;
  readonly help: string;
  readonly type?: string;
  get(): Promise<FamilyObject> | FamilyObject;
  getForPromString?: () => Promise<FamilyObject> | FamilyObject;
}

/**
 * Renders every metric of `registry` as registry.metrics() would (Prometheus content type, no default labels),
 * yielding between slices; metrics found in `sliced` (by object) write their rows through it.
 */
export async function renderSliced(registry: Registry, sliced: ReadonlyMap<object, SlicedFamily & { readonly help: string; readonly type: string }>, slicer = new RenderSlicer()): Promise<string> {
  const families: string[] = [];
  for (const metric of registry.getMetricsAsArray() as unknown as RegisteredMetric[]) {
    await slicer.maybeYield();
    const own = sliced.get(metric);
    if (own !== undefined) {
      const rows = await own.renderRows(slicer);
      families.push([...familyHeader(own.name, own.help, own.type), ...rows].join('\n'));
      continue;
    }
    const family = await (metric.getForPromString !== undefined ? metric.getForPromString() : metric.get());
    const name = escapeString(family.name);
    const lines = familyHeader(family.name, family.help, family.type);
    for (const value of family.values ?? []) lines.push(`${value.metricName ?? name}${labelsText(value.labels)} ${formatValue(value.value)}`);
    families.push(lines.join('\n'));
  }
  return `${families.join('\n\n')}\n`;
}

function familyHeader(name: string, help: string, type: string): string[] {
  const escaped = escapeString(name);
  return [`# HELP ${escaped} ${escapeString(help)}`, `# TYPE ${escaped} ${type}`];
}

function labelsText(labels: Readonly<Record<string, string | number>> | undefined): string {
  if (labels === undefined) return '';
  const parts: string[] = [];
  for (const [name, value] of Object.entries(labels)) parts.push(`${name}="${escapeLabelValue(value)}"`);
  return parts.length === 0 ? '' : `{${parts.join(',')}}`;
}

/** `name="value"` pairs joined by commas, for rows a sliced family writes (label order as given). */
export function formatLabelPairs(labels: readonly (readonly [string, string | number])[]): string {
  return labels.map(([name, value]) => `${name}="${escapeLabelValue(value)}"`).join(',');
}

/** A sample value as prom-client writes it: Nan, +Inf, -Inf, else the number's shortest decimal form. */
export function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'Nan';
  if (!Number.isFinite(value)) return value < 0 ? '-Inf' : '+Inf';
  return `${value}`;
}

function escapeLabelValue(value: string | number): string | number {
  return typeof value === 'string' ? escapeString(value).replace(/"/g, '\\"') : value;
}

function escapeString(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}
