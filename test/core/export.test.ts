import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DmaBuf, DmaBufError, SgTable, O_RDONLY, O_RDWR, O_CLOEXEC, type DmaBufOps } from '../../src/index.js';

const ops: DmaBufOps<object> = {
  mapDmaBuf: (a) => new SgTable([{ offset: 0, length: a.dmabuf.size }]),
  unmapDmaBuf: () => {},
  release: () => {},
};

function expectCode(fn: () => unknown, code: string, re?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof DmaBufError, `expected a DmaBufError, got ${String(err)}`);
    assert.equal(err.code, code);
    if (re) assert.match(err.message, re);
    return true;
  });
}

test('DmaBuf.export() rejects a missing priv with EINVAL', () => {
  expectCode(() => DmaBuf.export({ ops, size: 4096, priv: undefined as unknown as object }), 'EINVAL', /priv/);
  expectCode(() => DmaBuf.export({ ops, size: 4096, priv: null as unknown as object }), 'EINVAL', /priv/);
});

for (const op of ['mapDmaBuf', 'unmapDmaBuf', 'release'] as const) {
  test(`DmaBuf.export() rejects ops without ${op} with EINVAL`, () => {
    const partial = { ...ops } as Partial<DmaBufOps<object>>;
    delete partial[op];
    expectCode(() => DmaBuf.export({ ops: partial as DmaBufOps<object>, size: 4096, priv: {} }), 'EINVAL', new RegExp(op));
  });
}

test('DmaBuf.export() rejects missing ops and non-function optional ops with EINVAL', () => {
  expectCode(() => DmaBuf.export({ ops: undefined as unknown as DmaBufOps<object>, size: 4096, priv: {} }), 'EINVAL', /ops/);
  expectCode(() => DmaBuf.export({ ops: { ...ops, attach: 5 } as unknown as DmaBufOps<object>, size: 4096, priv: {} }), 'EINVAL', /attach/);
  expectCode(() => DmaBuf.export(undefined as unknown as Parameters<typeof DmaBuf.export>[0]), 'EINVAL');
});

for (const size of [0, -1, 1.5, NaN, Infinity, 2 ** 53, '4096', 4096n, undefined]) {
  test(`DmaBuf.export() rejects size ${String(size)} with EINVAL`, () => {
    expectCode(() => DmaBuf.export({ ops, size: size as number, priv: {} }), 'EINVAL', /size/);
  });
}

test('DmaBuf.export() validates flags and names', () => {
  expectCode(() => DmaBuf.export({ ops, size: 1, priv: {}, flags: 0o100 }), 'EINVAL', /flags/);
  expectCode(() => DmaBuf.export({ ops, size: 1, priv: {}, flags: 1 }), 'EINVAL', /flags/);
  expectCode(() => DmaBuf.export({ ops, size: 1, priv: {}, name: 5 as unknown as string }), 'EINVAL', /name/);
  expectCode(() => DmaBuf.export({ ops, size: 1, priv: {}, name: 'a\0b' }), 'EINVAL', /name/);
  for (const flags of [O_RDWR, O_RDONLY, O_RDWR | O_CLOEXEC, O_RDONLY | O_CLOEXEC]) {
    const buf = DmaBuf.export({ ops, size: 1, priv: {}, flags, name: 'ok', exporter: 'unit' });
    assert.equal(buf.flags, flags);
    assert.equal(buf.readOnly, (flags & 3) === O_RDONLY);
    assert.equal(buf.name, 'ok');
    assert.equal(buf.exporter, 'unit');
    assert.equal(buf.size, 1);
    buf.put();
  }
});

test('a put buffer refuses fd, attach and put with EINVAL and never crashes', async () => {
  const buf = DmaBuf.export({ ops, size: 4096, priv: {} });
  buf.put();
  expectCode(() => buf.fd(), 'EINVAL', /put/);
  expectCode(() => buf.put(), 'EINVAL', /put/);
  await assert.rejects(buf.seal(), (e: unknown) => DmaBufError.is(e, 'EINVAL'));
  buf[Symbol.dispose](); // idempotent
});

test('Symbol.dispose puts the buffer (using)', () => {
  let released = 0;
  {
    using buf = DmaBuf.export({ ops: { ...ops, release: () => { released += 1; } }, size: 64, priv: {} });
    assert.equal(buf.refs, 1);
  }
  assert.equal(released, 1);
});

test('DmaBufError carries code, op and a message, and is an Error', () => {
  try {
    DmaBuf.export({ ops, size: -5, priv: {} });
    assert.fail('export accepted a negative size');
  } catch (err) {
    assert.ok(err instanceof Error);
    assert.ok(DmaBufError.is(err, 'EINVAL'));
    assert.equal(err.op, 'export');
    assert.equal(err.name, 'DmaBufError');
  }
});
