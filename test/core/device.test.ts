/**
 * Devices that were not built by their constructor (issue 8, smaller findings).
 */
import { test } from 'node:test';
import { closeSync } from 'node:fs';
import assert from 'node:assert/strict';
import { CpuDevice, Device, DmaBuf, DmaBufError, systemHeap } from '../../src/index.js';

test('attach: Object.create(CpuDevice.prototype) is refused with EINVAL (not EIO), and nothing is attached', async () => {
  const buf = systemHeap.allocate(4096, { name: 'fake-device' });
  const fake = Object.create(CpuDevice.prototype) as CpuDevice;
  assert.ok(fake instanceof Device, 'it passes instanceof');
  assert.equal(Device.isDevice(fake), false);
  assert.equal(Device.isDevice(new CpuDevice()), true);
  for (const bad of [fake, {}, null, Object.create(Device.prototype)]) {
    await assert.rejects(buf.attach(bad as Device), (e: unknown) => {
      assert.ok(DmaBufError.is(e, 'EINVAL'), String(e));
      assert.equal(e.op, 'attach');
      assert.match(e.message, /expected a Device \(for example new CpuDevice\(\)\)/);
      return true;
    });
  }
  await assert.rejects(buf.attach(fake), /not built by its constructor/);
  assert.equal(buf.attachments.length, 0);
  const fd = buf.fd();
  await assert.rejects(DmaBuf.getMapped(fd, fake, 'to-device'), (e: unknown) => DmaBufError.is(e, 'EINVAL'));
  assert.equal(buf.refs, 1, 'getMapped took no reference');
  closeSync(fd);
  buf.put();
  assert.equal(buf.released, true);
});
