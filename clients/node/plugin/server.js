#!/usr/bin/env node
'use strict';
// An agentrt tool plugin in Node.js: serves agentrt.plugin.v1.ToolProviderService (the tools
// of ./tools.js) and grpc.health.v1.Health, on the port given by --port or PORT (0: any
// free port), and prints "listening on HOST:PORT" once it accepts calls.

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { TOOLS, ToolError } = require('./tools');
const { includeDirs, fromStruct, toStruct } = require('../lib/protos');

const SERVICE = 'agentrt.plugin.v1.ToolProviderService';
const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

function loadPluginService() {
  const definition = protoLoader.loadSync('agentrt/plugin/v1/plugin.proto', {
    ...LOADER_OPTIONS,
    includeDirs: includeDirs(),
  });
  return grpc.loadPackageDefinition(definition).agentrt.plugin.v1.ToolProviderService.service;
}

// grpc.health.v1.Health's Check, described inline rather than from a copy of health.proto.
function loadHealthService() {
  const json = {
    nested: {
      grpc: { nested: { health: { nested: { v1: { nested: {
        HealthCheckRequest: { fields: { service: { type: 'string', id: 1 } } },
        HealthCheckResponse: {
          fields: { status: { type: 'ServingStatus', id: 1 } },
          nested: {
            ServingStatus: { values: { UNKNOWN: 0, SERVING: 1, NOT_SERVING: 2, SERVICE_UNKNOWN: 3 } },
          },
        },
        Health: {
          methods: { Check: { requestType: 'HealthCheckRequest', responseType: 'HealthCheckResponse' } },
        },
      } } } } } },
    },
  };
  const definition = protoLoader.fromJSON(json, LOADER_OPTIONS);
  return grpc.loadPackageDefinition(definition).grpc.health.v1.Health.service;
}

function statusError(code, details) {
  return Object.assign(new Error(details), { code, details });
}

const toolProvider = {
  ListTools(call, callback) {
    const tools = [...TOOLS.values()].map(({ spec }) => ({ ...spec, parameters: toStruct(spec.parameters) }));
    callback(null, { tools, next_page_token: '' });
  },

  CallTool(call, callback) {
    const { tool: name, arguments: args, call_id: callId, job } = call.request;
    const tool = TOOLS.get(name);
    if (!tool) {
      callback(statusError(grpc.status.NOT_FOUND, `no tool is called "${name}"`));
      return;
    }
    const parsed = fromStruct(args);
    if (typeof parsed.text !== 'string') {
      callback(statusError(grpc.status.INVALID_ARGUMENT, 'arguments.text must be a string'));
      return;
    }
    try {
      const { text = '', structured } = tool.run(parsed);
      console.error(`${name} for ${job || 'no job'} (call ${callId}): ok`);
      callback(null, { text, structured: structured && toStruct(structured), is_error: false });
    } catch (error) {
      if (!(error instanceof ToolError)) {
        callback(statusError(grpc.status.INTERNAL, `${name} failed: ${error.message}`));
        return;
      }
      // The tool ran and failed: an answer for the model, not a status error.
      callback(null, { text: error.message, is_error: true });
    }
  },
};

function healthService(serving) {
  return {
    Check(call, callback) {
      const { service } = call.request;
      if (service !== '' && service !== SERVICE) {
        callback(statusError(grpc.status.NOT_FOUND, `unknown service "${service}"`));
        return;
      }
      callback(null, { status: serving.value ? 'SERVING' : 'NOT_SERVING' });
    },
  };
}

function parseArgs(argv) {
  const options = { host: process.env.HOST || '127.0.0.1', port: process.env.PORT || '0' };
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--port') options.port = argv[(i += 1)];
    else if (argv[i] === '--host') options.host = argv[(i += 1)];
    else throw new Error(`unknown argument ${argv[i]}; usage: server.js [--host HOST] [--port PORT]`);
  }
  if (!/^\d+$/.test(String(options.port)) || Number(options.port) > 65535) {
    throw new Error(`--port/PORT must be a port number, got "${options.port}"`);
  }
  return options;
}

function main() {
  const { host, port } = parseArgs(process.argv.slice(2));
  const serving = { value: true };
  const server = new grpc.Server();
  server.addService(loadPluginService(), toolProvider);
  server.addService(loadHealthService(), healthService(serving));
  const address = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (error, bound) => {
    if (error) {
      console.error(`cannot listen on ${address}: ${error.message}`);
      process.exit(1);
    }
    const shown = host.includes(':') ? `[${host}]` : host;
    console.log(`listening on ${shown}:${bound}`);
  });
  // Stop as a gRPC service should: report NOT_SERVING, let calls in flight finish, stop.
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => {
      serving.value = false;
      const force = setTimeout(() => server.forceShutdown(), 5000);
      server.tryShutdown(() => {
        clearTimeout(force);
        process.exit(0);
      });
    });
  }
}

if (require.main === module) main();

module.exports = { fromStruct, toStruct };
