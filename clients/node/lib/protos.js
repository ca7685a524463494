'use strict';
// What the plugin and the client share: where the contracts are found, and
// google.protobuf.Struct / Value as proto-loader represents them, to and from plain JSON.

const path = require('node:path');

const REPO = path.resolve(__dirname, '..', '..', '..');

// The include path of the contracts: protos/ and the google/api protos that `make protodeps`
// copies to .build/protodeps; AGENTRT_PROTO_PATH (':'-separated) puts folders before them.
function includeDirs() {
  const extra = (process.env.AGENTRT_PROTO_PATH || '').split(path.delimiter).filter(Boolean);
  return [...extra, path.join(REPO, 'protos'), path.join(REPO, '.build', 'protodeps')];
}

function fromValue(value) {
  switch (value.kind) {
    case 'nullValue': return null;
    case 'numberValue': return value.numberValue;
    case 'stringValue': return value.stringValue;
    case 'boolValue': return value.boolValue;
    case 'structValue': return fromStruct(value.structValue);
    case 'listValue': return (value.listValue.values || []).map(fromValue);
    default: return null;
  }
}

function fromStruct(struct) {
  const object = {};
  for (const [key, value] of Object.entries((struct && struct.fields) || {})) object[key] = fromValue(value);
  return object;
}

function toValue(json) {
  if (json === null || json === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof json === 'number') return { numberValue: json };
  if (typeof json === 'string') return { stringValue: json };
  if (typeof json === 'boolean') return { boolValue: json };
  if (Array.isArray(json)) return { listValue: { values: json.map(toValue) } };
  return { structValue: toStruct(json) };
}

function toStruct(object) {
  const fields = {};
  for (const [key, value] of Object.entries(object)) fields[key] = toValue(value);
  return { fields };
}

module.exports = { REPO, includeDirs, fromStruct, fromValue, toStruct, toValue };
