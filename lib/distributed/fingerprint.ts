/**
 * The model check. Ranks that built different models would average unrelated
 * gradients in silence (or hang on mismatched sizes), so verifyModel refuses
 * them, naming the first difference.
 *
 * modelFingerprint lists what must agree, one entry per fact: the model's class;
 * each adapter's config field by field (seeds included) and the active adapters;
 * every parameter's name, shape, whether it trains, its device and a hash of its
 * values; and a hash of every frozen tensor the adapters regenerate from their
 * seeds (TeRA's core and factors, VeRA's A and B), which never travel because
 * each rank makes them bit for bit. Hashes are SHA-256 of the float32 bytes, the
 * same on every rank for the same values.
 *
 * verifyModel compares one 32-byte digest per rank (one allgather). Only when
 * they differ does rank 0's list travel, and every rank reports its first
 * difference from it, so each rank throws the same complete message.
 */
import { AdapterLinear } from '../adapters/layer';
import { PeftModel } from '../adapters/peft-model';
import { Module } from '../nn/module';
import { formatShape } from '../shape';
import type { Tensor } from '../tensor/tensor';
import { type Group, runSync } from './group';
import { type Steps, allgatherRecords, broadcastBytes, digest, hex, recordText, textRecord } from './requests';

export interface FingerprintEntry {
  key: string;
  value: string;
}

export interface FingerprintOptions {
  /**
   * Hash every parameter's values (default true). false compares only names,
   * shapes and configs for the parameters, for models too large to hash at each
   * start; the adapters' frozen tensors are hashed either way.
   */
  hashParameters?: boolean;
}

export interface VerifiedModel {
  /** The digest every rank agreed on (hex). */
  digest: string;
  /** How many facts it covers. */
  entries: number;
}

function hashOf(t: Tensor): string {
  const values = t.toFloat32Array();
  return hex(digest(new Uint8Array(values.buffer, values.byteOffset, values.byteLength))).slice(0, 32);
}

/** What must agree across ranks, in a fixed order. */
export function modelFingerprint(model: PeftModel | Module, options: FingerprintOptions = {}): FingerprintEntry[] {
  if (!(model instanceof PeftModel || model instanceof Module)) {
    throw new Error('modelFingerprint: pass a PeftModel or an nn.Module');
  }
  const hashParameters = options?.hashParameters ?? true;
  if (typeof hashParameters !== 'boolean') throw new Error('modelFingerprint: hashParameters must be true or false');
  const peft = model instanceof PeftModel ? model : new PeftModel(model);
  const entries: FingerprintEntry[] = [{ key: 'model', value: peft.model.constructor.name }];
  for (const [name, config] of Object.entries(peft.peftConfig)) {
    const json = config.toJson();
    for (const field of Object.keys(json).sort()) {
      entries.push({ key: `adapter '${name}' ${field}`, value: JSON.stringify(json[field]) });
    }
  }
  entries.push({ key: 'active adapters', value: JSON.stringify(peft.activeAdapters) });
  for (const [name, p] of peft.namedParameters()) {
    const role = p.requiresGrad ? 'trainable' : 'frozen';
    const hash = hashParameters ? ` sha256:${hashOf(p.data)}` : '';
    entries.push({ key: `parameter '${name}'`, value: `${formatShape(p.shape)} ${role} ${p.device}${hash}` });
  }
  const seen = new Set<string>();
  for (const [, layer] of peft.model.namedModules()) {
    if (!(layer instanceof AdapterLinear)) continue;
    for (const adapterName of layer.adapterNames) {
      for (const [fileKey, t] of Object.entries(layer.adapter(adapterName)!.frozenTensors())) {
        const key = `frozen tensor '${fileKey}' of adapter '${adapterName}'`;
        if (seen.has(key)) continue; // shared by several layers
        seen.add(key);
        entries.push({ key, value: `${formatShape(t.shape)} ${t.device} sha256:${hashOf(t)}` });
      }
    }
  }
  return entries;
}

function describeDifference(
  reference: FingerprintEntry | undefined,
  mine: FingerprintEntry | undefined,
  rank: number,
): string {
  const show = (e: FingerprintEntry | undefined) => (e === undefined ? 'nothing' : `${e.key} = ${e.value}`);
  if (reference !== undefined && mine !== undefined && reference.key === mine.key) {
    return `${mine.key}: rank 0 has ${reference.value}, rank ${rank} has ${mine.value}`;
  }
  return `rank 0 has ${show(reference)} where rank ${rank} has ${show(mine)}`;
}

function* verifySteps(g: Group, model: PeftModel | Module, options: FingerprintOptions): Steps<VerifiedModel> {
  const entries = modelFingerprint(model, options);
  const mine = digest(entries.map((e) => `${e.key} = ${e.value}`).join('\n'));
  const { rank, worldSize } = g.info;
  const digests = yield* allgatherRecords(worldSize, mine);
  if (digests.every((d) => hex(d) === hex(digests[0]))) return { digest: hex(mine), entries: entries.length };

  const encoded = rank === 0 ? new TextEncoder().encode(JSON.stringify(entries)) : null;
  const reference = JSON.parse(
    new TextDecoder().decode(yield* broadcastBytes(encoded, 0, rank === 0)),
  ) as FingerprintEntry[];
  let index = 0;
  while (
    index < Math.max(reference.length, entries.length) &&
    reference[index]?.key === entries[index]?.key &&
    reference[index]?.value === entries[index]?.value
  ) {
    index++;
  }
  const differs = index < Math.max(reference.length, entries.length);
  const report = differs ? describeDifference(reference[index], entries[index], rank) : '';
  const reports = yield* allgatherRecords(worldSize, textRecord(report, 1024));
  const lines = reports.map(recordText).flatMap((text, r) => (text ? [`rank ${r}: ${text}`] : []));
  throw new Error(
    `tera.distributed.verifyModel: the ranks built different models (each rank's first difference from rank 0):\n  ` +
      `${lines.join('\n  ')}\nBuild the model the same way on every rank (configs, seeds, base weights). Trainable ` +
      `values that differ can be copied from rank 0 first: tera.distributed.broadcast(model.trainableParameters()` +
      `.map((p) => p.data)).`,
  );
}

/**
 * Refuses (on every rank, naming the first difference) unless every rank built
 * the same model. Collective: call it on every rank after building the model,
 * before training; it can run again later to check that the ranks stayed in step.
 */
export function verifyModel(model: PeftModel | Module, options: FingerprintOptions = {}): VerifiedModel {
  return runSync('verifyModel', (g) => verifySteps(g, model, options));
}
