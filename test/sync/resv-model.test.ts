/**
 * A property test of DmaResv against a simple model: random sequences of add, signal,
 * fences and test, with plain fences and fences of two timelines.
 *
 * The model keeps every add and knows which fences have signalled (a timeline fence signals
 * every lower and equal seqno of its timeline). A user of usage q must respect the unsignalled
 * fences added with a usage it respects (kernel < write < read < bookkeep; a reader respects
 * up to write, a writer up to read). The object may replace a fence by a later fence of the
 * same timeline, so the property is: every fence it returns is one the model expects, each
 * once, and every fence the model expects is returned or covered by a returned later fence of
 * its timeline (waiting for that one implies waiting for it). test(q) is true exactly when the
 * model expects nothing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DMA_RESV_USAGES, DmaFence, DmaFenceTimeline, DmaResv, type DmaResvUsage } from '../../src/index.js';
import { checkDescriptorsAfterEach } from './agent.js';

checkDescriptorsAfterEach();

const LEVEL: Record<DmaResvUsage, number> = { kernel: 0, write: 1, read: 2, bookkeep: 3 };
const RESPECTS: Record<DmaResvUsage, number> = { kernel: 0, read: 1, write: 2, bookkeep: 3 };

/** Fence i: 0..1 plain, 2..4 on timeline A (seqnos 1..3), 5..7 on timeline B (seqnos 1..3). */
const SPEC = [
  { timeline: null, seqno: 0 },
  { timeline: null, seqno: 0 },
  { timeline: 'A', seqno: 1 },
  { timeline: 'A', seqno: 2 },
  { timeline: 'A', seqno: 3 },
  { timeline: 'B', seqno: 1 },
  { timeline: 'B', seqno: 2 },
  { timeline: 'B', seqno: 3 },
] as const;

type Command =
  | { kind: 'add'; fence: number; usage: DmaResvUsage }
  | { kind: 'signal'; fence: number }
  | { kind: 'query'; usage: DmaResvUsage };

const usage = fc.constantFrom(...DMA_RESV_USAGES);
const fenceIndex = fc.integer({ min: 0, max: SPEC.length - 1 });
const command: fc.Arbitrary<Command> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('add' as const), fence: fenceIndex, usage }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('signal' as const), fence: fenceIndex }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('query' as const), usage }) },
);

function run(commands: Command[], makeResv: () => DmaResv = () => new DmaResv()): void {
  const timelines = { A: new DmaFenceTimeline('A'), B: new DmaFenceTimeline('B') };
  const fences = SPEC.map((s, i) => (s.timeline ? timelines[s.timeline].create(s.seqno, { name: String(i) }) : new DmaFence({ name: String(i) })));
  const index = new Map(fences.map((f, i) => [f, i]));
  const resv = makeResv();
  // The model.
  const added: Array<{ fence: number; level: number }> = [];
  const signaled = new Set<number>();
  const expected = (u: DmaResvUsage): Set<number> =>
    new Set(added.filter((a) => a.level <= RESPECTS[u] && !signaled.has(a.fence)).map((a) => a.fence));

  for (const c of commands) {
    if (c.kind === 'add') {
      resv.add(fences[c.fence]!, c.usage);
      added.push({ fence: c.fence, level: LEVEL[c.usage] });
    } else if (c.kind === 'signal') {
      fences[c.fence]!.signal();
      const s = SPEC[c.fence]!;
      SPEC.forEach((t, i) => {
        if (i === c.fence || (s.timeline !== null && t.timeline === s.timeline && t.seqno <= s.seqno)) signaled.add(i);
      });
    } else {
      const got = resv.fences(c.usage).map((f) => index.get(f)!);
      const want = expected(c.usage);
      assert.equal(new Set(got).size, got.length, `no fence twice: ${got}`);
      for (const g of got) assert.ok(want.has(g), `fence ${g} returned for ${c.usage}, but the model does not expect it`);
      for (const w of want) {
        const s = SPEC[w]!;
        const covered = got.some((g) => g === w || (s.timeline !== null && SPEC[g]!.timeline === s.timeline && SPEC[g]!.seqno >= s.seqno));
        assert.ok(covered, `fence ${w} must be respected by ${c.usage}; got ${got}`);
      }
      assert.equal(resv.test(c.usage), want.size === 0);
    }
  }
}

test('DmaResv matches the usage model over random sequences of add, signal, fences and test', () => {
  fc.assert(fc.property(fc.array(command, { maxLength: 40 }), (commands) => run(commands)), { numRuns: 500 });
});

test('the same property fails for a reservation object whose writers forget read fences (the test can fail)', () => {
  class Mistaken extends DmaResv {
    override fences(u: DmaResvUsage): DmaFence[] {
      return super.fences(u === 'write' ? 'read' : u);
    }
  }
  assert.throws(
    () => fc.assert(fc.property(fc.array(command, { maxLength: 40 }), (commands) => run(commands, () => new Mistaken())), { numRuns: 500 }),
    /must be respected by write/,
  );
});
