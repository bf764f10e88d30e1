import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync } from 'node:fs';
import fc from 'fast-check';
import { CpuDevice, DmaBuf, type DmaBufAttachment, type SgTable } from '../../src/index.js';
import { recordingExport, waitFor, type CallLog, openFdCount } from '../helpers.js';

type Cmd = 'fd' | 'close' | 'get' | 'put' | 'attach' | 'detach' | 'map' | 'unmap';
const CMDS: Cmd[] = ['fd', 'close', 'get', 'put', 'attach', 'detach', 'map', 'unmap'];

interface Model {
  refs: number;
  fds: number[];
  attachments: { att: DmaBufAttachment<CallLog>; maps: SgTable[] }[];
}

test('the reference-count and attachment state machine matches its model (property-based)', async () => {
  const fdsBefore = openFdCount();
  await fc.assert(
    fc.asyncProperty(fc.array(fc.tuple(fc.constantFrom(...CMDS), fc.nat(10)), { minLength: 1, maxLength: 40 }), async (steps) => {
      const { buf, log } = recordingExport(8192);
      const m: Model = { refs: 1, fds: [], attachments: [] };
      const shouldRelease = (): boolean => m.refs === 0 && m.fds.length === 0 && m.attachments.length === 0;
      for (const [cmd, pick] of steps) {
        if (shouldRelease()) break;
        switch (cmd) {
          case 'fd':
            if (m.refs > 0) m.fds.push(buf.fd());
            break;
          case 'close':
            if (m.fds.length > 0) closeSync(m.fds.splice(pick % m.fds.length, 1)[0]!);
            break;
          case 'get':
            if (m.fds.length > 0) {
              const got = await DmaBuf.get(m.fds[pick % m.fds.length]!);
              assert.equal(got, buf);
              m.refs += 1;
            }
            break;
          case 'put':
            if (m.refs > 0) { buf.put(); m.refs -= 1; }
            break;
          case 'attach':
            if (m.refs > 0) m.attachments.push({ att: await buf.attach(new CpuDevice({ name: `d${pick}` })), maps: [] });
            break;
          case 'detach':
            if (m.attachments.length > 0) {
              const [entry] = m.attachments.splice(pick % m.attachments.length, 1);
              await entry!.att.detach();
            }
            break;
          case 'map':
            if (m.attachments.length > 0) {
              const entry = m.attachments[pick % m.attachments.length]!;
              entry.maps.push(await entry.att.map(pick % 2 ? 'to-device' : 'bidirectional'));
            }
            break;
          case 'unmap': {
            const withMaps = m.attachments.filter((a) => a.maps.length > 0);
            if (withMaps.length > 0) {
              const entry = withMaps[pick % withMaps.length]!;
              await entry.att.unmap(entry.maps.splice(pick % entry.maps.length, 1)[0]!);
            }
            break;
          }
        }
        // The implementation agrees with the model after every step.
        assert.equal(buf.refs, m.refs);
        assert.equal(buf.attachments.length, m.attachments.length);
        assert.equal(buf.mapCount, m.attachments.reduce((n, a) => n + a.maps.length, 0));
        if (shouldRelease()) {
          await waitFor(() => log.released === 1, 5000, 'release');
        } else {
          assert.equal(log.released, 0, `released too early after ${cmd}`);
        }
      }
      // Tear down in an order the model allows, then check release happened exactly once.
      for (const a of m.attachments) await a.att.detach();
      for (const fd of m.fds) closeSync(fd);
      while (m.refs > 0) { buf.put(); m.refs -= 1; }
      await waitFor(() => log.released === 1, 5000, 'release at teardown');
      assert.equal(log.calls.filter((c) => c === 'release').length, 1);
      assert.equal(log.calls.filter((c) => c.startsWith('map')).length, log.calls.filter((c) => c.startsWith('unmap')).length);
    }),
    { numRuns: 150 },
  );
  assert.equal(openFdCount(), fdsBefore, 'no descriptor leaked');
});
