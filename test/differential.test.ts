// Differential tests: each case is a sequence of HTTP requests sent to mcr and
// to the reference registry (CNCF Distribution 2.8.2, Debian package
// `docker-registry`), each run in the same repository name on its own server.
// Per step the two must agree on the status, the error codes, the presence of
// the headers the step lists and, where the step lists them, header values and
// bodies. Every mcr response must also follow a few rules of its own (see
// checkMcrInvariants). Where mcr differs on purpose, the step's
// `differs` quotes the rule of the OCI Distribution Specification v1.1 (or
// states that the specification leaves the behaviour open), asserts mcr's side
// and asserts the reference's recorded side, so that the table stays true.
//
// Set MCR_DIFF_TRACE=1 to print both responses of every step.

import assert from 'node:assert/strict';
import { Agent, request } from 'node:http';
import { after, before, describe, it, type TestContext } from 'node:test';

import {
  DOCKER_CONFIG,
  DOCKER_MANIFEST,
  OCI_CONFIG,
  OCI_INDEX,
  OCI_LAYER,
  OCI_MANIFEST,
  sha256,
  sha512,
} from './helpers/oci.js';
import { startReference, type ReferenceServer } from './helpers/reference.js';
import {
  ADMIN_PASSWORD,
  ADMIN_USER,
  basicAuth,
  startServer,
  type TestServer,
} from './helpers/server.js';

type Method = 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/**
 * The error codes of the OCI Distribution Specification v1.1, section "Error
 * Codes": "The `code` field MUST be one of the following".
 */
const SPEC_ERROR_CODES = [
  'BLOB_UNKNOWN',
  'BLOB_UPLOAD_INVALID',
  'BLOB_UPLOAD_UNKNOWN',
  'DIGEST_INVALID',
  'MANIFEST_BLOB_UNKNOWN',
  'MANIFEST_INVALID',
  'MANIFEST_UNKNOWN',
  'NAME_INVALID',
  'NAME_UNKNOWN',
  'SIZE_INVALID',
  'UNAUTHORIZED',
  'DENIED',
  'UNSUPPORTED',
  'TOOMANYREQUESTS',
];

/** Headers whose presence is reported as a diagnostic when it differs outside a step's list. */
const TRACKED_HEADERS = [
  'docker-content-digest',
  'location',
  'range',
  'docker-upload-uuid',
  'content-length',
  'content-type',
  'content-range',
  'link',
  'oci-subject',
  'docker-distribution-api-version',
];

/** One side of a deliberate difference. Every aspect given is asserted. */
interface RecordedOutcome {
  status?: number;
  codes?: string[];
  /** Header presence, by lower-case name. */
  headers?: Record<string, boolean>;
  /** Header values, by lower-case name. */
  values?: Record<string, string>;
  /** The parsed JSON body. A `tags` array in a reference body is compared sorted. */
  body?: unknown;
  /** True when the response body ended before its Content-Length. */
  truncated?: boolean;
}

/**
 * A step where mcr differs from the reference. Aspects left out are compared
 * between the two as usual, except that error codes are not compared when
 * only the status is recorded.
 */
interface Difference extends RecordedOutcome {
  /** The specification text behind mcr's behaviour. */
  rule: string;
  reference: RecordedOutcome;
}

/** How a step compares response bodies. */
type BodyComparison =
  | 'bytes'
  /** Equal as JSON values (the reference ends JSON bodies with a newline). */
  | 'json'
  /** A tags list: same name and tag set, and mcr's tags in byte order. */
  | 'tags';

interface Step {
  method: Method;
  /**
   * Request path with `{name}` placeholders: `{repo}`, `{other}` (a second
   * repository of the case) and every captured variable. Each "?" after the
   * first becomes "&", so `{upload}?digest=...` works whether or not the
   * upload location already has a query.
   */
  path: string;
  headers?: Record<string, string>;
  body?: Buffer | string;
  /** Sends the body with chunked transfer coding and no Content-Length. */
  streamed?: boolean;
  /** Response headers whose presence the two registries must share. */
  required?: string[];
  /**
   * Response headers whose values the two registries must share when both
   * statuses match. Content-Length is compared on success responses only,
   * because error messages differ.
   */
  same?: string[];
  /** How to compare bodies when both registries succeed (status below 300). */
  sameBody?: BodyComparison;
  /** Text that the response body of both registries must contain. */
  bodyIncludes?: string;
  /** Variables to set from response headers: variable name to lower-case header name. */
  capture?: Record<string, string>;
  differs?: Difference;
}

interface Case {
  name: string;
  steps: Step[];
}

/** The parts of one response that the comparison looks at. */
interface Outcome {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
  /** Codes of a JSON error body, in order, or empty without one. */
  codes: string[];
  /** Set when the connection failed while the body was being read. */
  truncated: boolean;
}

// ---------------------------------------------------------------------------
// Content shared by the cases. Both registries get the same bytes, so
// digests and manifest bodies are equal on both sides.

const CONFIG = Buffer.from(
  JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }),
);
const LAYER = Buffer.from('differential test layer\n'.repeat(40));
const OTHER = Buffer.from('bytes that no case pushes');
const CHUNKS = Buffer.from('0123456789abcdefghij');
const EMPTY = Buffer.alloc(0);
const DOCKER_LAYER = 'application/vnd.docker.image.rootfs.diff.tar.gzip';

function descriptorOf(mediaType: string, data: Buffer) {
  return { mediaType, digest: sha256(data), size: data.length };
}

function json(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value));
}

const MANIFEST = json({
  schemaVersion: 2,
  mediaType: OCI_MANIFEST,
  config: descriptorOf(OCI_CONFIG, CONFIG),
  layers: [descriptorOf(OCI_LAYER, LAYER)],
});
const DOCKER_V2_MANIFEST = json({
  schemaVersion: 2,
  mediaType: DOCKER_MANIFEST,
  config: descriptorOf(DOCKER_CONFIG, CONFIG),
  layers: [descriptorOf(DOCKER_LAYER, LAYER)],
});
const INDEX = json({
  schemaVersion: 2,
  mediaType: OCI_INDEX,
  manifests: [
    { ...descriptorOf(OCI_MANIFEST, MANIFEST), platform: { os: 'linux', architecture: 'amd64' } },
  ],
});
const INDEX_MISSING_CHILD = json({
  schemaVersion: 2,
  mediaType: OCI_INDEX,
  manifests: [descriptorOf(OCI_MANIFEST, OTHER)],
});
const MANIFEST_MISSING_LAYER = json({
  schemaVersion: 2,
  mediaType: OCI_MANIFEST,
  config: descriptorOf(OCI_CONFIG, CONFIG),
  layers: [descriptorOf(OCI_LAYER, OTHER)],
});
const MANIFEST_WRONG_SIZE = json({
  schemaVersion: 2,
  mediaType: OCI_MANIFEST,
  config: descriptorOf(OCI_CONFIG, CONFIG),
  layers: [{ ...descriptorOf(OCI_LAYER, LAYER), size: LAYER.length + 1 }],
});
const SCHEMA1_MANIFEST = json({
  schemaVersion: 1,
  name: 'diff/schema1',
  tag: 'v1',
  architecture: 'amd64',
  fsLayers: [{ blobSum: sha256(LAYER) }],
  history: [{ v1Compatibility: '{"id":"a"}' }],
});
const ARTIFACT = json({
  schemaVersion: 2,
  mediaType: OCI_MANIFEST,
  artifactType: 'application/vnd.example.sbom.v1',
  config: descriptorOf(OCI_CONFIG, CONFIG),
  layers: [descriptorOf(OCI_LAYER, LAYER)],
  subject: descriptorOf(OCI_MANIFEST, MANIFEST),
});

const OCTET = { 'content-type': 'application/octet-stream' };
const UPLOAD_STARTED = ['location', 'docker-upload-uuid', 'range', 'content-length'];
const UPLOAD_PROGRESS = ['location', 'range', 'docker-upload-uuid'];
const BLOB_CREATED = ['location', 'docker-content-digest'];
const MANIFEST_HEADERS = ['content-type', 'docker-content-digest', 'content-length'];
const ALL_MANIFEST_TYPES = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST].join(', ');
const ACCEPT_ALL = { accept: ALL_MANIFEST_TYPES };
const UNKNOWN_UPLOAD = '3f0c9d2e-6a51-4c1b-9f4e-0d7b2a9c8e11';

// Rules quoted from the OCI Distribution Specification v1.1 (spec.md).
const RULE_SINGLE_POST =
  'spec v1.1, single POST: "Registries MAY support pushing blobs using a single POST request", ' +
  'and those that do not "SHOULD return a 202 Accepted". The reference does not support it.';
const RULE_SINGLE_POST_FOLLOWS =
  'follows from the single POST above: mcr stored the blob, the reference only opened a session';
const RULE_REFERENCE_NO_ROUTE =
  'spec v1.1: <name> "MUST match" [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(\\/...)*, and NAME_INVALID ' +
  'is the code for an "invalid repository name". The reference has no route for such a path ' +
  'and returns a plain-text 404 or a redirect to the cleaned path.';

// ---------------------------------------------------------------------------
// Step builders.

/** Returns the difference for a blob that only mcr stored, after an earlier difference. */
function presentOnlyInMcr(rule: string): Difference {
  return {
    rule,
    status: 200,
    headers: { 'docker-content-digest': true },
    reference: { status: 404, headers: { 'docker-content-digest': false } },
  };
}

function startUpload(repo = '{repo}'): Step {
  return {
    method: 'POST',
    path: `/v2/${repo}/blobs/uploads/`,
    required: UPLOAD_STARTED,
    same: ['range'],
    capture: { upload: 'location' },
  };
}

function patchChunk(data: Buffer, start: number): Step {
  return {
    method: 'PATCH',
    path: '{upload}',
    headers: { ...OCTET, 'content-range': `${start}-${start + data.length - 1}` },
    body: data,
    required: UPLOAD_PROGRESS,
    same: ['range'],
    capture: { upload: 'location' },
  };
}

function uploadStatus(): Step {
  return {
    method: 'GET',
    path: '{upload}',
    required: UPLOAD_PROGRESS,
    same: ['range'],
    capture: { upload: 'location' },
  };
}

function finishUpload(digest: string, body?: Buffer): Step {
  return {
    method: 'PUT',
    path: `{upload}?digest=${digest}`,
    ...(body ? { headers: OCTET, body } : {}),
    required: BLOB_CREATED,
    same: ['docker-content-digest'],
  };
}

/** Pushes a blob with POST then PUT, the flow both registries support. */
function pushBlob(data: Buffer, repo = '{repo}'): Step[] {
  return [startUpload(repo), finishUpload(sha256(data), data)];
}

function getBlob(method: 'GET' | 'HEAD', digest: string, repo = '{repo}'): Step {
  return {
    method,
    path: `/v2/${repo}/blobs/${digest}`,
    required: ['docker-content-digest', 'content-length'],
    same: ['docker-content-digest', 'content-length'],
    ...(method === 'GET' ? { sameBody: 'bytes' as const } : {}),
  };
}

function putManifest(reference: string, body: Buffer, mediaType = OCI_MANIFEST): Step {
  return {
    method: 'PUT',
    path: `/v2/{repo}/manifests/${reference}`,
    headers: { 'content-type': mediaType },
    body,
    required: ['location', 'docker-content-digest'],
    same: ['docker-content-digest'],
  };
}

/** Builds a manifest GET or HEAD step. An empty `accept` sends no Accept header. */
function getManifest(
  method: 'GET' | 'HEAD',
  reference: string,
  accept: string = ALL_MANIFEST_TYPES,
): Step {
  return {
    method,
    path: `/v2/{repo}/manifests/${reference}`,
    headers: accept === '' ? {} : { accept },
    required: MANIFEST_HEADERS,
    same: MANIFEST_HEADERS,
    ...(method === 'GET' ? { sameBody: 'bytes' as const } : {}),
  };
}

/** Pushes the config and layer blobs and the image manifest under `reference`. */
function pushImage(reference: string): Step[] {
  return [...pushBlob(CONFIG), ...pushBlob(LAYER), putManifest(reference, MANIFEST)];
}

function tagsList(query = ''): Step {
  return {
    method: 'GET',
    path: `/v2/{repo}/tags/list${query}`,
    required: ['content-type'],
    sameBody: 'tags',
  };
}

// ---------------------------------------------------------------------------
// The cases.

const BLOB_CASES: Case[] = [
  {
    name: 'base endpoint',
    steps: [{ method: 'GET', path: '/v2/', required: ['content-type'], sameBody: 'json' }],
  },
  {
    name: 'blob monolithic POST',
    steps: [
      {
        method: 'POST',
        path: `/v2/{repo}/blobs/uploads/?digest=${sha256(LAYER)}`,
        headers: OCTET,
        body: LAYER,
        required: [...BLOB_CREATED, 'docker-upload-uuid'],
        differs: {
          rule: RULE_SINGLE_POST,
          status: 201,
          headers: { 'docker-content-digest': true, 'docker-upload-uuid': false },
          reference: {
            status: 202,
            headers: { 'docker-content-digest': false, 'docker-upload-uuid': true },
          },
        },
      },
      {
        ...getBlob('HEAD', sha256(LAYER)),
        differs: presentOnlyInMcr(RULE_SINGLE_POST_FOLLOWS),
      },
    ],
  },
  {
    name: 'blob POST then PUT',
    steps: [
      startUpload(),
      finishUpload(sha256(LAYER), LAYER),
      getBlob('HEAD', sha256(LAYER)),
      getBlob('GET', sha256(LAYER)),
    ],
  },
  {
    name: 'blob chunked upload',
    steps: [
      { ...startUpload(), headers: { 'content-length': '0' } },
      patchChunk(CHUNKS.subarray(0, 10), 0),
      patchChunk(CHUNKS.subarray(10), 10),
      finishUpload(sha256(CHUNKS)),
      getBlob('GET', sha256(CHUNKS)),
    ],
  },
  {
    name: 'blob last chunk in PUT',
    steps: [
      startUpload(),
      patchChunk(CHUNKS.subarray(0, 10), 0),
      {
        ...finishUpload(sha256(CHUNKS), CHUNKS.subarray(10)),
        headers: { ...OCTET, 'content-range': '10-19' },
      },
      getBlob('GET', sha256(CHUNKS)),
    ],
  },
  {
    // The reference ignores where a chunk's Content-Range starts and appends
    // it, so its upload goes on with the wrong bytes.
    name: 'blob out-of-order chunk',
    steps: [
      startUpload(),
      patchChunk(CHUNKS.subarray(0, 10), 0),
      {
        ...patchChunk(CHUNKS.subarray(15), 15),
        differs: {
          rule:
            'spec v1.1: "If a chunk is uploaded out of order, the registry MUST respond with a ' +
            '416 Requested Range Not Satisfiable code"',
          status: 416,
          codes: ['BLOB_UPLOAD_INVALID'],
          headers: { location: false, 'docker-upload-uuid': false },
          values: { range: '0-9' },
          reference: {
            status: 202,
            codes: [],
            headers: { location: true, 'docker-upload-uuid': true },
            values: { range: '0-14' },
          },
        },
      },
      {
        ...uploadStatus(),
        differs: {
          rule: 'follows from the out-of-order chunk: mcr rejected it, the reference appended it',
          values: { range: '0-9' },
          reference: { values: { range: '0-14' } },
        },
      },
      {
        ...patchChunk(CHUNKS.subarray(10), 10),
        differs: {
          rule: 'follows from the out-of-order chunk: mcr rejected it, the reference appended it',
          values: { range: '0-19' },
          reference: { values: { range: '0-24' } },
        },
      },
      {
        ...finishUpload(sha256(CHUNKS)),
        differs: {
          rule: 'follows from the out-of-order chunk: the reference stored 25 wrong bytes',
          status: 201,
          codes: [],
          headers: { location: true, 'docker-content-digest': true },
          reference: {
            status: 400,
            codes: ['DIGEST_INVALID'],
            headers: { location: false, 'docker-content-digest': false },
          },
        },
      },
    ],
  },
  {
    name: 'blob chunk length mismatch',
    steps: [
      startUpload(),
      {
        ...patchChunk(CHUNKS.subarray(0, 5), 0),
        headers: { ...OCTET, 'content-range': '0-9' },
        differs: {
          rule:
            'spec v1.1: the Content-Range "<range> refers to the byte range of the chunk". ' +
            'mcr rejects a 5-byte chunk sent as 0-9 with 416 like any unusable range, while ' +
            'the specification names no status for this case and the reference stores the 5 bytes',
          status: 416,
          codes: ['BLOB_UPLOAD_INVALID'],
          headers: { location: false, 'docker-upload-uuid': false },
          values: { range: '0-0' },
          reference: {
            status: 202,
            codes: [],
            headers: { location: true, 'docker-upload-uuid': true },
            values: { range: '0-4' },
          },
        },
      },
      {
        ...uploadStatus(),
        differs: {
          rule: 'follows from the rejected chunk: mcr stored nothing',
          values: { range: '0-0' },
          reference: { values: { range: '0-4' } },
        },
      },
    ],
  },
  {
    name: 'blob streamed PATCH',
    steps: [
      startUpload(),
      {
        method: 'PATCH',
        path: '{upload}',
        headers: OCTET,
        body: LAYER,
        streamed: true,
        required: UPLOAD_PROGRESS,
        same: ['range'],
        capture: { upload: 'location' },
      },
      finishUpload(sha256(LAYER)),
      getBlob('GET', sha256(LAYER)),
    ],
  },
  {
    name: 'blob upload status',
    steps: [startUpload(), uploadStatus(), patchChunk(CHUNKS.subarray(0, 10), 0), uploadStatus()],
  },
  {
    name: 'blob upload cancel',
    steps: [
      startUpload(),
      { method: 'DELETE', path: '{upload}' },
      { method: 'GET', path: '{upload}' },
      { ...patchChunk(CHUNKS, 0), capture: {} },
    ],
  },
  {
    // The reference needs the `_state` query parameter of its own upload
    // locations and reports BLOB_UPLOAD_INVALID without it.
    name: 'blob upload unknown',
    steps: [
      ...pushBlob(CONFIG),
      ...(['GET', 'PATCH', 'PUT', 'DELETE'] as const).map((method): Step => {
        const query = method === 'PUT' ? `?digest=${sha256(CHUNKS)}` : '';
        const hasBody = method === 'PATCH' || method === 'PUT';
        return {
          method,
          path: `/v2/{repo}/blobs/uploads/${UNKNOWN_UPLOAD}${query}`,
          ...(hasBody ? { headers: OCTET, body: CHUNKS } : {}),
          differs: {
            rule: 'spec v1.1 error codes: BLOB_UPLOAD_UNKNOWN is "blob upload unknown to registry"',
            codes: ['BLOB_UPLOAD_UNKNOWN'],
            reference: { codes: ['BLOB_UPLOAD_INVALID'] },
          },
        };
      }),
    ],
  },
  {
    name: 'blob present and absent',
    steps: [
      ...pushBlob(LAYER),
      getBlob('HEAD', sha256(LAYER)),
      getBlob('GET', sha256(LAYER)),
      getBlob('HEAD', sha256(OTHER)),
      getBlob('GET', sha256(OTHER)),
      getBlob('GET', sha256(LAYER), '{repo}/unknown'),
    ],
  },
  {
    name: 'blob range requests',
    steps: [
      ...pushBlob(LAYER),
      {
        ...getBlob('GET', sha256(LAYER)),
        headers: { range: 'bytes=2-9' },
        required: ['content-range', 'content-length'],
        same: ['content-range', 'content-length'],
      },
      {
        ...getBlob('GET', sha256(LAYER)),
        headers: { range: 'bytes=-5' },
        required: ['content-range', 'content-length'],
        same: ['content-range', 'content-length'],
      },
      {
        ...getBlob('GET', sha256(LAYER)),
        headers: { range: `bytes=${LAYER.length + 10}-` },
        required: ['content-range'],
        same: ['content-range'],
        sameBody: undefined,
        differs: {
          rule:
            'spec v1.1 leaves the body of a 416 open ("A 4XX response ... MAY return a body in ' +
            'any format"). mcr sends a JSON error, the reference a plain-text body shorter than ' +
            'its Content-Length of 960, after which it closes the connection',
          codes: ['SIZE_INVALID'],
          reference: { codes: [], truncated: true },
        },
      },
    ],
  },
  {
    name: 'blob delete',
    steps: [
      ...pushBlob(LAYER),
      { method: 'DELETE', path: `/v2/{repo}/blobs/${sha256(LAYER)}` },
      getBlob('HEAD', sha256(LAYER)),
      getBlob('GET', sha256(LAYER)),
      { method: 'DELETE', path: `/v2/{repo}/blobs/${sha256(LAYER)}` },
    ],
  },
  {
    name: 'blob finalize wrong digest',
    steps: [
      startUpload(),
      patchChunk(CHUNKS, 0),
      finishUpload(sha256(OTHER)),
      {
        method: 'GET',
        path: '{upload}',
        differs: {
          rule:
            'not specified: spec v1.1 does not say whether a session survives a closing PUT ' +
            'with the wrong digest. mcr cancels it and removes its data, the reference keeps it',
          status: 404,
          codes: ['BLOB_UPLOAD_UNKNOWN'],
          reference: { status: 204, codes: [] },
        },
      },
      getBlob('HEAD', sha256(OTHER)),
      getBlob('HEAD', sha256(CHUNKS)),
    ],
  },
  {
    name: 'blob finalize without digest',
    steps: [
      startUpload(),
      patchChunk(CHUNKS, 0),
      { method: 'PUT', path: '{upload}' },
      uploadStatus(),
      finishUpload(sha256(CHUNKS)),
    ],
  },
  {
    name: 'blob malformed digest',
    steps: [
      ...pushBlob(CONFIG),
      { method: 'GET', path: '/v2/{repo}/blobs/sha256:xyz' },
      { method: 'GET', path: `/v2/{repo}/blobs/sha256:${'A'.repeat(64)}` },
      {
        method: 'GET',
        path: '/v2/{repo}/blobs/notadigest',
        differs: {
          rule:
            'not specified for blobs: mcr returns DIGEST_INVALID as the referrers API must ' +
            '("a <digest> with an invalid syntax, a 400 Bad Request MUST be returned"). The ' +
            'reference has no route for the path and returns a plain-text 404',
          status: 400,
          codes: ['DIGEST_INVALID'],
          reference: { status: 404, codes: [] },
        },
      },
      { method: 'DELETE', path: '/v2/{repo}/blobs/sha256:abc' },
      {
        method: 'POST',
        path: '/v2/{repo}/blobs/uploads/?digest=sha256:abc',
        headers: OCTET,
        body: CHUNKS,
        differs: {
          rule: `${RULE_SINGLE_POST} It ignores the digest parameter.`,
          status: 400,
          codes: ['DIGEST_INVALID'],
          reference: { status: 202, codes: [] },
        },
      },
      startUpload(),
      { method: 'PUT', path: '{upload}?digest=sha256:abc', headers: OCTET, body: CHUNKS },
    ],
  },
  {
    name: 'blob zero bytes',
    steps: [
      startUpload(),
      { ...finishUpload(sha256(EMPTY)), headers: { 'content-length': '0' } },
      getBlob('HEAD', sha256(EMPTY)),
      getBlob('GET', sha256(EMPTY)),
    ],
  },
  {
    name: 'blob sha512 monolithic POST',
    steps: [
      {
        method: 'POST',
        path: `/v2/{repo}/blobs/uploads/?digest=${sha512(LAYER)}`,
        headers: OCTET,
        body: LAYER,
        required: [...BLOB_CREATED, 'docker-upload-uuid'],
        differs: {
          rule: RULE_SINGLE_POST,
          status: 201,
          headers: { 'docker-content-digest': true, 'docker-upload-uuid': false },
          reference: {
            status: 202,
            headers: { 'docker-content-digest': false, 'docker-upload-uuid': true },
          },
        },
      },
      {
        ...getBlob('HEAD', sha512(LAYER)),
        differs: presentOnlyInMcr(RULE_SINGLE_POST_FOLLOWS),
      },
    ],
  },
  {
    // The reference accepts sha512 but stores and reports the blob under its
    // sha256 digest.
    name: 'blob sha512 POST then PUT',
    steps: [
      startUpload(),
      {
        ...finishUpload(sha512(LAYER), LAYER),
        differs: {
          rule:
            'spec v1.1: Docker-Content-Digest "returns the canonical digest of the uploaded ' +
            'blob which MAY differ from the provided digest". mcr keeps the algorithm the ' +
            'client chose',
          values: { 'docker-content-digest': sha512(LAYER) },
          reference: { values: { 'docker-content-digest': sha256(LAYER) } },
        },
      },
      {
        ...getBlob('GET', sha512(LAYER)),
        differs: {
          rule: 'follows from the sha512 upload: the reference reports the sha256 digest',
          values: { 'docker-content-digest': sha512(LAYER) },
          reference: { values: { 'docker-content-digest': sha256(LAYER) } },
        },
      },
    ],
  },
];

const NAME_CASES: Case[] = [
  {
    name: 'repository name invalid',
    steps: [
      {
        method: 'GET',
        path: '/v2/Diff/tags/list',
        differs: {
          rule: RULE_REFERENCE_NO_ROUTE,
          status: 400,
          codes: ['NAME_INVALID'],
          reference: { status: 404, codes: [] },
        },
      },
      {
        method: 'POST',
        path: '/v2/diff/Upper/blobs/uploads/',
        differs: {
          rule: RULE_REFERENCE_NO_ROUTE,
          status: 400,
          codes: ['NAME_INVALID'],
          reference: { status: 404, codes: [] },
        },
      },
      {
        method: 'GET',
        path: '/v2/{repo}/-dash/tags/list',
        differs: {
          rule: RULE_REFERENCE_NO_ROUTE,
          status: 400,
          codes: ['NAME_INVALID'],
          reference: { status: 404, codes: [] },
        },
      },
      ...['/v2/{repo}//tags/list', '/v2/{repo}//blobs/uploads/'].map((path): Step => ({
        method: path.endsWith('uploads/') ? 'POST' : 'GET',
        path,
        differs: {
          rule: RULE_REFERENCE_NO_ROUTE,
          status: 400,
          codes: ['NAME_INVALID'],
          headers: { location: false },
          reference: { status: 301, codes: [], headers: { location: true } },
        },
      })),
      // NOTE: mcr fails these until it stops resolving dot segments: it
      // parses the path with the WHATWG URL parser, which turns
      // "diff/x/../escape" into "diff/escape", and serves that repository.
      ...[
        '/v2/{repo}/../escape/tags/list',
        '/v2/{repo}/%2e%2e/escape/tags/list',
        `/v2/{repo}/../escape/blobs/${sha256(LAYER)}`,
      ].map((path): Step => ({
        method: 'GET',
        path,
        differs: {
          rule:
            'spec v1.1: <name> "MUST match" the name grammar, which has no "." or ".." ' +
            'component. A request for another repository than the one in its path must ' +
            'fail like any other invalid name (the reference redirects to the cleaned path)',
          status: 400,
          codes: ['NAME_INVALID'],
          headers: { location: false },
          reference: { status: 301, codes: [], headers: { location: true } },
        },
      })),
    ],
  },
];

const MANIFEST_CASES: Case[] = [
  {
    name: 'manifest by tag',
    steps: [
      ...pushImage('v1'),
      getManifest('GET', 'v1'),
      getManifest('HEAD', 'v1'),
      getManifest('GET', sha256(MANIFEST)),
      getManifest('HEAD', sha256(MANIFEST)),
    ],
  },
  {
    name: 'manifest by digest',
    steps: [
      ...pushBlob(CONFIG),
      ...pushBlob(LAYER),
      putManifest(sha256(MANIFEST), MANIFEST),
      getManifest('GET', sha256(MANIFEST)),
      getManifest('HEAD', sha256(MANIFEST)),
      {
        ...tagsList(),
        differs: {
          rule:
            'spec v1.1: "Assuming a repository is found, this request MUST return a 200 OK ' +
            'response code. The list of tags MAY be empty"',
          status: 200,
          body: { name: 'diff/manifest-by-digest', tags: [] },
          reference: { status: 404, codes: ['NAME_UNKNOWN'] },
        },
      },
    ],
  },
  {
    name: 'manifest Docker schema 2',
    steps: [
      ...pushBlob(CONFIG),
      ...pushBlob(LAYER),
      putManifest('v1', DOCKER_V2_MANIFEST, DOCKER_MANIFEST),
      getManifest('GET', 'v1', DOCKER_MANIFEST),
      {
        ...getManifest('GET', 'v1', OCI_MANIFEST),
        differs: {
          rule:
            'Accept rules: mcr never converts a manifest, so an Accept header without the ' +
            'stored type gets 404 MANIFEST_UNKNOWN, the only failure spec v1.1 lists for ' +
            'GET /v2/<name>/manifests/<reference>. The reference tries to convert it to ' +
            'schema 1 and fails',
          status: 404,
          codes: ['MANIFEST_UNKNOWN'],
          reference: { status: 400, codes: ['MANIFEST_INVALID'] },
        },
      },
    ],
  },
  {
    name: 'manifest missing blob',
    steps: [...pushBlob(CONFIG), putManifest('v1', MANIFEST_MISSING_LAYER)],
  },
  {
    name: 'manifest descriptor size mismatch',
    steps: [
      ...pushBlob(CONFIG),
      ...pushBlob(LAYER),
      {
        ...putManifest('v1', MANIFEST_WRONG_SIZE),
        differs: {
          rule:
            'not required by spec v1.1, which allows it: MANIFEST_INVALID is the code for a ' +
            '"manifest invalid". mcr checks each descriptor size against the stored blob, ' +
            'the reference does not',
          status: 400,
          codes: ['MANIFEST_INVALID'],
          headers: { location: false, 'docker-content-digest': false },
          reference: {
            status: 201,
            codes: [],
            headers: { location: true, 'docker-content-digest': true },
          },
        },
      },
    ],
  },
  {
    name: 'manifest schema 1',
    steps: [
      ...pushBlob(LAYER),
      putManifest('v1', SCHEMA1_MANIFEST, 'application/vnd.docker.distribution.manifest.v1+json'),
      putManifest(
        'v2',
        SCHEMA1_MANIFEST,
        'application/vnd.docker.distribution.manifest.v1+prettyjws',
      ),
    ],
  },
  {
    name: 'manifest not JSON',
    steps: [...pushBlob(CONFIG), putManifest('v1', Buffer.from('this is not JSON'))],
  },
  {
    name: 'manifest digest mismatch',
    steps: [
      ...pushBlob(CONFIG),
      ...pushBlob(LAYER),
      putManifest(sha256(OTHER), MANIFEST),
      { method: 'GET', path: `/v2/{repo}/manifests/${sha256(MANIFEST)}`, headers: ACCEPT_ALL },
    ],
  },
  {
    name: 'manifest Content-Type',
    steps: [
      ...pushBlob(CONFIG),
      ...pushBlob(LAYER),
      putManifest('v1', MANIFEST, DOCKER_MANIFEST),
      {
        ...putManifest('v2', MANIFEST),
        headers: {},
        differs: {
          rule:
            'Content-Type rules: in spec v1.1 clients "SHOULD set the Content-Type header" ' +
            'and manifests "SHOULD include a mediaType field". mcr takes the media type from ' +
            'the body when the header is missing, the reference rejects the push',
          status: 201,
          codes: [],
          headers: { location: true, 'docker-content-digest': true },
          reference: {
            status: 400,
            codes: ['MANIFEST_INVALID'],
            headers: { location: false, 'docker-content-digest': false },
          },
        },
      },
    ],
  },
  {
    name: 'manifest Accept negotiation',
    steps: [
      ...pushImage('v1'),
      ...['', '*/*'].map((accept): Step => ({
        ...getManifest('GET', 'v1', accept),
        differs: {
          rule:
            'Accept rules: spec v1.1: "A GET request to an existing manifest URL MUST provide ' +
            'the expected manifest, with a response code that MUST be 200 OK". The reference ' +
            'serves OCI manifests only when Accept names their media type',
          status: 200,
          headers: { 'content-type': true, 'docker-content-digest': true },
          reference: {
            status: 404,
            codes: ['MANIFEST_UNKNOWN'],
            headers: { 'content-type': true, 'docker-content-digest': false },
          },
        },
      })),
      getManifest('GET', 'v1', DOCKER_MANIFEST),
      getManifest('GET', 'v1', OCI_MANIFEST),
      getManifest('HEAD', 'v1', `${OCI_MANIFEST};q=0.9, ${DOCKER_MANIFEST}`),
    ],
  },
  {
    name: 'manifest unknown',
    steps: [
      ...pushBlob(CONFIG),
      { method: 'GET', path: `/v2/{repo}/manifests/missing`, headers: ACCEPT_ALL },
      { method: 'HEAD', path: `/v2/{repo}/manifests/missing`, headers: ACCEPT_ALL },
      { method: 'GET', path: `/v2/{repo}/manifests/${sha256(OTHER)}`, headers: ACCEPT_ALL },
      { method: 'GET', path: `/v2/{repo}/unknown/manifests/v1`, headers: ACCEPT_ALL },
      {
        method: 'GET',
        path: '/v2/{repo}/manifests/-invalid',
        differs: {
          rule:
            'not specified: a tag "MUST match" [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}, but spec ' +
            'v1.1 names no status or code for one that does not. mcr answers a GET with the ' +
            'only failure the spec lists for pulls, 404 MANIFEST_UNKNOWN; the reference has ' +
            'no route and returns a plain-text 404',
          status: 404,
          codes: ['MANIFEST_UNKNOWN'],
          reference: { status: 404, codes: [] },
        },
      },
    ],
  },
  {
    name: 'manifest delete by digest',
    steps: [
      ...pushImage('v1'),
      { method: 'DELETE', path: `/v2/{repo}/manifests/${sha256(MANIFEST)}` },
      { method: 'GET', path: `/v2/{repo}/manifests/${sha256(MANIFEST)}`, headers: ACCEPT_ALL },
      { method: 'GET', path: `/v2/{repo}/manifests/v1`, headers: ACCEPT_ALL },
      { method: 'DELETE', path: `/v2/{repo}/manifests/${sha256(MANIFEST)}` },
      {
        ...tagsList(),
        differs: {
          rule:
            'spec v1.1: the tags list body is {"name": ..., "tags": [...]}, and ' +
            '"The list of tags MAY be empty"',
          body: { name: 'diff/manifest-delete-by-digest', tags: [] },
          reference: { body: { name: 'diff/manifest-delete-by-digest', tags: null } },
        },
      },
    ],
  },
  {
    name: 'manifest delete by tag',
    steps: [
      ...pushImage('v1'),
      {
        method: 'DELETE',
        path: '/v2/{repo}/manifests/v1',
        differs: {
          rule:
            'spec v1.1: "a registry MAY implement tag deletion". mcr does and returns 202, the ' +
            'reference does not and returns 400, as "If tag deletion is disabled" requires',
          status: 202,
          codes: [],
          reference: { status: 400, codes: ['DIGEST_INVALID'] },
        },
      },
      {
        ...getManifest('GET', 'v1'),
        differs: {
          rule: 'follows from the tag deletion',
          status: 404,
          codes: ['MANIFEST_UNKNOWN'],
          headers: { 'docker-content-digest': false },
          reference: { status: 200, codes: [], headers: { 'docker-content-digest': true } },
        },
      },
      getManifest('GET', sha256(MANIFEST)),
    ],
  },
  {
    name: 'manifest index',
    steps: [
      ...pushBlob(CONFIG),
      ...pushBlob(LAYER),
      putManifest(sha256(MANIFEST), MANIFEST),
      putManifest('multi', INDEX, OCI_INDEX),
      getManifest('GET', 'multi', OCI_INDEX),
    ],
  },
  {
    // NOTE: mcr fails this until it reports a missing child manifest as
    // MANIFEST_BLOB_UNKNOWN. It returns MANIFEST_UNKNOWN.
    name: 'manifest index missing child',
    steps: [putManifest('multi', INDEX_MISSING_CHILD, OCI_INDEX)],
  },
  {
    name: 'referrers',
    steps: [
      ...pushImage('v1'),
      {
        ...putManifest('sbom', ARTIFACT),
        required: ['location', 'docker-content-digest', 'oci-subject'],
        differs: {
          rule:
            'spec v1.1: a registry that supports the referrers API "MUST respond with the ' +
            'response header OCI-Subject: <subject digest>". The reference has no referrers API',
          headers: { 'oci-subject': true },
          values: { 'oci-subject': sha256(MANIFEST) },
          reference: { headers: { 'oci-subject': false } },
        },
      },
      {
        method: 'GET',
        path: `/v2/{repo}/referrers/${sha256(MANIFEST)}`,
        required: ['content-type'],
        differs: {
          rule:
            'spec v1.1, listing referrers: "this request MUST return a 200 OK" with an image ' +
            'index. Distribution 2.8 predates the referrers API and returns 404',
          status: 200,
          values: { 'content-type': OCI_INDEX },
          body: {
            schemaVersion: 2,
            mediaType: OCI_INDEX,
            manifests: [
              {
                mediaType: OCI_MANIFEST,
                digest: sha256(ARTIFACT),
                size: ARTIFACT.length,
                artifactType: 'application/vnd.example.sbom.v1',
              },
            ],
          },
          reference: { status: 404, codes: [] },
        },
      },
      {
        method: 'GET',
        path: '/v2/{repo}/referrers/notadigest',
        differs: {
          rule:
            'spec v1.1, listing referrers: "If the request is invalid, such as a <digest> with ' +
            'an invalid syntax, a 400 Bad Request MUST be returned"',
          status: 400,
          codes: ['DIGEST_INVALID'],
          reference: { status: 404, codes: [] },
        },
      },
    ],
  },
];

const RULE_TAG_PAGINATION =
  'spec v1.1, listing tags: with n "the response MUST include <int> results" unless fewer ' +
  'remain or a Link header is sent, and "When n is zero, this endpoint MUST return an empty ' +
  'list". Distribution 2.8 ignores n and last and returns every tag.';

const LISTING_CASES: Case[] = [
  {
    name: 'tags list',
    steps: [
      ...pushImage('c'),
      putManifest('a', MANIFEST),
      putManifest('b', MANIFEST),
      tagsList(),
      {
        ...tagsList('?n=2'),
        required: ['content-type', 'link'],
        differs: {
          rule: RULE_TAG_PAGINATION,
          headers: { link: true },
          values: { link: '</v2/diff/tags-list/tags/list?n=2&last=b>; rel="next"' },
          body: { name: 'diff/tags-list', tags: ['a', 'b'] },
          reference: {
            headers: { link: false },
            body: { name: 'diff/tags-list', tags: ['a', 'b', 'c'] },
          },
        },
      },
      {
        ...tagsList('?n=2&last=a'),
        required: ['content-type', 'link'],
        differs: {
          rule: RULE_TAG_PAGINATION,
          body: { name: 'diff/tags-list', tags: ['b', 'c'] },
          reference: { body: { name: 'diff/tags-list', tags: ['a', 'b', 'c'] } },
        },
      },
      {
        ...tagsList('?last=b'),
        differs: {
          rule: RULE_TAG_PAGINATION,
          body: { name: 'diff/tags-list', tags: ['c'] },
          reference: { body: { name: 'diff/tags-list', tags: ['a', 'b', 'c'] } },
        },
      },
      {
        ...tagsList('?n=0'),
        required: ['content-type', 'link'],
        differs: {
          rule: RULE_TAG_PAGINATION,
          body: { name: 'diff/tags-list', tags: [] },
          reference: { body: { name: 'diff/tags-list', tags: ['a', 'b', 'c'] } },
        },
      },
      // NOTE: mcr fails this until it rejects an invalid n with an error code
      // from the specification's list. It sends PAGINATION_NUMBER_INVALID.
      {
        method: 'GET',
        path: '/v2/{repo}/tags/list?n=abc',
        differs: {
          rule:
            'not specified: spec v1.1 defines n only as an integer. mcr rejects "abc" with 400, ' +
            'the reference ignores n',
          status: 400,
          reference: { status: 200 },
        },
      },
    ],
  },
  {
    // Spec v1.1 requires "lexical order (i.e. case-insensitive alphanumeric
    // order)", but its conformance suite accepts that or byte order, which both
    // registries use.
    name: 'tags list mixed case',
    steps: [...pushImage('B'), putManifest('a', MANIFEST), tagsList()],
  },
  {
    name: 'tags list unknown repository',
    steps: [{ method: 'GET', path: '/v2/{repo}/tags/list' }],
  },
  {
    name: 'catalog',
    steps: [
      ...pushImage('v1'),
      { method: 'GET', path: '/v2/_catalog', required: ['content-type'], bodyIncludes: '{repo}' },
      { method: 'GET', path: '/v2/_catalog?n=1', required: ['content-type', 'link'] },
    ],
  },
];

const MOUNT_CASES: Case[] = [
  {
    name: 'mount from repository',
    steps: [
      ...pushBlob(LAYER, '{other}'),
      {
        method: 'POST',
        path: `/v2/{repo}/blobs/uploads/?mount=${sha256(LAYER)}&from={other}`,
        required: BLOB_CREATED,
        same: ['docker-content-digest'],
      },
      getBlob('HEAD', sha256(LAYER)),
      getBlob('GET', sha256(LAYER)),
    ],
  },
  {
    name: 'mount blob absent',
    steps: [
      ...pushBlob(CONFIG, '{other}'),
      {
        method: 'POST',
        path: `/v2/{repo}/blobs/uploads/?mount=${sha256(LAYER)}&from={other}`,
        required: UPLOAD_STARTED,
        capture: { upload: 'location' },
      },
      finishUpload(sha256(LAYER), LAYER),
      getBlob('HEAD', sha256(LAYER)),
    ],
  },
  {
    name: 'mount without from',
    steps: [
      ...pushBlob(LAYER, '{other}'),
      {
        method: 'POST',
        path: `/v2/{repo}/blobs/uploads/?mount=${sha256(LAYER)}`,
        required: ['location', 'docker-content-digest', 'docker-upload-uuid'],
        differs: {
          rule:
            'spec v1.1: "The registry MAY treat the from parameter as optional, and it MAY ' +
            'cross-mount the blob if it can be found". The reference opens an upload session.',
          status: 201,
          headers: { 'docker-content-digest': true, 'docker-upload-uuid': false },
          reference: {
            status: 202,
            headers: { 'docker-content-digest': false, 'docker-upload-uuid': true },
          },
        },
      },
      {
        ...getBlob('HEAD', sha256(LAYER)),
        differs: presentOnlyInMcr('follows from the mount without from'),
      },
    ],
  },
];

const CASES: Case[] = [
  ...BLOB_CASES,
  ...NAME_CASES,
  ...MANIFEST_CASES,
  ...LISTING_CASES,
  ...MOUNT_CASES,
];

// ---------------------------------------------------------------------------
// Sending requests.

/** Replaces placeholders and turns every "?" after the first into "&". */
function expand(template: string, vars: Record<string, string>): string {
  const text = template.replace(/\{([a-z]+)\}/g, (_whole, name: string) => {
    const value = vars[name];
    if (value === undefined) throw new Error(`no value for {${name}} in "${template}"`);
    return value;
  });
  const question = text.indexOf('?');
  if (question < 0) return text;
  return text.slice(0, question + 1) + text.slice(question + 1).replaceAll('?', '&');
}

/**
 * Sends one request with node:http, which sends the path as given (fetch()
 * would resolve "..") and follows no redirects. A connection that fails
 * while the body is read gives an outcome marked `truncated`.
 */
function send(
  base: URL,
  agent: Agent,
  method: Method,
  path: string,
  headers: Record<string, string>,
  body: Buffer | undefined,
  streamed: boolean,
): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const outgoing: Record<string, string> = { ...headers };
    if (!streamed && body !== undefined && outgoing['content-length'] === undefined) {
      outgoing['content-length'] = String(body.length);
    }
    const req = request(
      { host: base.hostname, port: base.port, method, path, headers: outgoing, agent },
      (res) => {
        const chunks: Buffer[] = [];
        const responseHeaders: Record<string, string> = {};
        for (const [name, value] of Object.entries(res.headers)) {
          if (value !== undefined) responseHeaders[name] = String(value);
        }
        const finish = (truncated: boolean) => {
          const responseBody = Buffer.concat(chunks);
          resolve({
            status: res.statusCode ?? 0,
            headers: responseHeaders,
            body: responseBody,
            codes: errorCodes(responseHeaders, responseBody),
            truncated,
          });
        };
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('error', () => finish(true));
        res.on('end', () => finish(false));
      },
    );
    req.setTimeout(10_000, () => req.destroy(new Error(`${method} ${path} timed out after 10 s`)));
    req.on('error', reject);
    if (body !== undefined && streamed) {
      // Two writes without Content-Length make node:http use chunked coding.
      req.write(body.subarray(0, Math.floor(body.length / 2)));
      req.write(body.subarray(Math.floor(body.length / 2)));
    } else if (body !== undefined) {
      req.write(body);
    }
    req.end();
  });
}

function errorCodes(headers: Record<string, string>, body: Buffer): string[] {
  if (!(headers['content-type'] ?? '').includes('json') || body.length === 0) return [];
  try {
    const parsed = JSON.parse(body.toString('utf8')) as { errors?: Array<{ code?: unknown }> };
    return (parsed.errors ?? []).map((error) => String(error.code));
  } catch {
    return [];
  }
}

/** Turns an absolute or relative Location into a path with query on the same server. */
function pathOf(location: string, base: URL): string {
  const url = new URL(location, base);
  return url.pathname + url.search;
}

function summary(outcome: Outcome): string {
  const shown = TRACKED_HEADERS.filter((name) => outcome.headers[name] !== undefined)
    .map((name) => `${name}: ${(outcome.headers[name] ?? '').slice(0, 90)}`)
    .join('; ');
  const text = outcome.body.toString('utf8').slice(0, 300).replace(/\s+/g, ' ');
  const truncated = outcome.truncated ? ' (truncated)' : '';
  return `${outcome.status} [${outcome.codes.join(',')}] {${shown}} ${text}${truncated}`;
}

interface Target {
  base: URL;
  agent: Agent;
  /** Headers sent with every request to this server, such as credentials. */
  headers?: Record<string, string>;
}

async function runSteps(target: Target, steps: Step[], repo: string): Promise<Outcome[]> {
  const vars: Record<string, string> = { repo, other: `${repo}-other` };
  const outcomes: Outcome[] = [];
  for (const step of steps) {
    const headers: Record<string, string> = { ...target.headers };
    for (const [name, value] of Object.entries(step.headers ?? {})) {
      headers[name] = expand(value, vars);
    }
    const outcome = await send(
      target.base,
      target.agent,
      step.method,
      expand(step.path, vars),
      headers,
      step.body === undefined ? undefined : Buffer.from(step.body),
      step.streamed ?? false,
    );
    for (const [variable, header] of Object.entries(step.capture ?? {})) {
      const value = outcome.headers[header];
      if (value !== undefined) vars[variable] = pathOf(value, target.base);
    }
    outcomes.push(outcome);
  }
  return outcomes;
}

// ---------------------------------------------------------------------------
// Comparing.

function repositoryOf(caseName: string): string {
  return `diff/${caseName.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`;
}

function parseJson(outcome: Outcome, where: string): unknown {
  try {
    return JSON.parse(outcome.body.toString('utf8'));
  } catch (error) {
    throw new Error(`${where}: body is not JSON: ${(error as Error).message}`);
  }
}

/** Sorts the `tags` array of a tags-list body, for bodies whose order is not compared. */
function withSortedTags(value: unknown): unknown {
  if (typeof value !== 'object' || value === null || !('tags' in value)) return value;
  const { tags } = value as { tags: unknown };
  return Array.isArray(tags) ? { ...value, tags: [...(tags as string[])].sort() } : value;
}

/**
 * Checks rules that every mcr response must follow, whatever the reference
 * does: error codes from the specification's list, no Content-Length on a
 * 204 (RFC 9110 section 8.6: "A server MUST NOT send a Content-Length header
 * field in any response with a status code of 1xx (Informational) or 204 (No
 * Content)") and a complete body.
 */
function checkMcrInvariants(where: string, mcr: Outcome, both: string): void {
  for (const code of mcr.codes) {
    assert.ok(
      SPEC_ERROR_CODES.includes(code),
      `${where}: mcr sent error code ${code}, which is not among the specification's error codes${both}`,
    );
  }
  if (mcr.status === 204) {
    assert.equal(
      mcr.headers['content-length'],
      undefined,
      `${where}: mcr sent Content-Length on a 204 response${both}`,
    );
  }
  assert.equal(mcr.truncated, false, `${where}: mcr response body was cut off${both}`);
}

function compareStatusAndCodes(
  where: string,
  differs: Difference | undefined,
  mcr: Outcome,
  reference: Outcome,
  both: string,
): void {
  if (differs?.status !== undefined) {
    assert.equal(mcr.status, differs.status, `${where}: mcr status (${differs.rule})${both}`);
    assert.equal(
      reference.status,
      differs.reference.status,
      `${where}: reference status is no longer as recorded${both}`,
    );
  } else {
    assert.equal(mcr.status, reference.status, `${where}: status${both}`);
  }

  if (differs?.codes !== undefined) {
    assert.deepEqual(
      mcr.codes,
      differs.codes,
      `${where}: mcr error codes (${differs.rule})${both}`,
    );
  }
  if (differs?.reference.codes !== undefined) {
    assert.deepEqual(
      reference.codes,
      differs.reference.codes,
      `${where}: reference error codes are no longer as recorded${both}`,
    );
  }
  if (differs?.codes === undefined && differs?.status === undefined) {
    assert.deepEqual(mcr.codes, reference.codes, `${where}: error codes${both}`);
  }
}

function compareHeaders(
  where: string,
  step: Step,
  mcr: Outcome,
  reference: Outcome,
  both: string,
): Set<string> {
  const differs = step.differs;
  const required = new Set([
    'docker-distribution-api-version',
    ...(step.required ?? []),
    ...Object.keys(differs?.headers ?? {}),
  ]);
  for (const name of required) {
    const expected = differs?.headers?.[name];
    if (expected === undefined) {
      assert.equal(
        mcr.headers[name] !== undefined,
        reference.headers[name] !== undefined,
        `${where}: presence of ${name}${both}`,
      );
      continue;
    }
    assert.equal(
      mcr.headers[name] !== undefined,
      expected,
      `${where}: mcr ${name} header (${differs?.rule})${both}`,
    );
    assert.equal(
      reference.headers[name] !== undefined,
      differs?.reference.headers?.[name],
      `${where}: reference ${name} header is no longer as recorded${both}`,
    );
  }

  for (const [name, value] of Object.entries(differs?.values ?? {})) {
    assert.equal(mcr.headers[name], value, `${where}: mcr ${name} value (${differs?.rule})${both}`);
  }
  for (const [name, value] of Object.entries(differs?.reference.values ?? {})) {
    assert.equal(
      reference.headers[name],
      value,
      `${where}: reference ${name} value is no longer as recorded${both}`,
    );
  }
  if (mcr.status === reference.status) {
    for (const name of step.same ?? []) {
      if (differs?.values?.[name] !== undefined) continue;
      if (name === 'content-length' && mcr.status >= 400) continue;
      assert.equal(mcr.headers[name], reference.headers[name], `${where}: value of ${name}${both}`);
    }
  }
  return required;
}

function compareBodies(
  where: string,
  step: Step,
  mcr: Outcome,
  reference: Outcome,
  repo: string,
  both: string,
): void {
  const differs = step.differs;
  if (differs?.body !== undefined) {
    assert.deepEqual(
      parseJson(mcr, where),
      differs.body,
      `${where}: mcr body (${differs.rule})${both}`,
    );
  }
  if (differs?.reference.body !== undefined) {
    assert.deepEqual(
      withSortedTags(parseJson(reference, where)),
      withSortedTags(differs.reference.body),
      `${where}: reference body is no longer as recorded${both}`,
    );
  }
  const bothSucceeded = mcr.status < 300 && reference.status < 300;
  if (differs?.body === undefined && step.sameBody && bothSucceeded) {
    if (step.sameBody === 'bytes') {
      assert.ok(mcr.body.equals(reference.body), `${where}: body bytes${both}`);
    } else if (step.sameBody === 'json') {
      assert.deepEqual(parseJson(mcr, where), parseJson(reference, where), `${where}: body${both}`);
    } else {
      const mcrList = parseJson(mcr, where) as { tags: string[] };
      assert.deepEqual(
        mcrList.tags,
        [...mcrList.tags].sort(),
        `${where}: mcr tags are not in lexical order${both}`,
      );
      assert.deepEqual(
        withSortedTags(mcrList),
        withSortedTags(parseJson(reference, where)),
        `${where}: tags list${both}`,
      );
    }
  }
  if (step.bodyIncludes !== undefined) {
    const text = expand(step.bodyIncludes, { repo });
    assert.ok(mcr.body.toString('utf8').includes(text), `${where}: mcr body lacks ${text}${both}`);
    assert.ok(
      reference.body.toString('utf8').includes(text),
      `${where}: reference body lacks ${text}${both}`,
    );
  }
  assert.equal(
    reference.truncated,
    differs?.reference.truncated ?? false,
    `${where}: reference body was ${reference.truncated ? '' : 'not '}cut off${both}`,
  );
}

/** Compares one step and returns the failure messages, so that one failure hides no other. */
function compareStep(
  t: TestContext,
  where: string,
  step: Step,
  mcr: Outcome,
  reference: Outcome,
  repo: string,
): string[] {
  const both = `\n  mcr:       ${summary(mcr)}\n  reference: ${summary(reference)}`;
  const failures: string[] = [];
  const attempt = (check: () => void) => {
    try {
      check();
    } catch (error) {
      failures.push((error as Error).message);
    }
  };

  let required = new Set<string>();
  attempt(() => compareStatusAndCodes(where, step.differs, mcr, reference, both));
  attempt(() => {
    required = compareHeaders(where, step, mcr, reference, both);
  });
  attempt(() => compareBodies(where, step, mcr, reference, repo, both));
  attempt(() => checkMcrInvariants(where, mcr, both));

  if (step.differs) t.diagnostic(`differs: ${where}: ${step.differs.rule}${both}`);
  const unlisted = TRACKED_HEADERS.filter(
    (name) =>
      !required.has(name) &&
      mcr.status === reference.status &&
      (mcr.headers[name] !== undefined) !== (reference.headers[name] !== undefined),
  );
  if (unlisted.length > 0) {
    t.diagnostic(`header presence differs, not compared: ${where}: ${unlisted.join(', ')}${both}`);
  }
  return failures;
}

describe('differential: mcr against Distribution 2.8', () => {
  let mcr: TestServer | undefined;
  let reference: ReferenceServer | undefined;
  const agents = { mcr: new Agent({ keepAlive: true }), reference: new Agent({ keepAlive: true }) };

  before(async () => {
    // If one registry fails to start, the other must still be stopped, or its
    // process keeps the test run alive.
    const [ours, theirs] = await Promise.allSettled([startServer(), startReference()]);
    if (ours.status === 'fulfilled') mcr = ours.value;
    if (theirs.status === 'fulfilled') reference = theirs.value;
    if (ours.status === 'rejected' || theirs.status === 'rejected') {
      await Promise.all([mcr?.cleanup(), reference?.stop()]);
      throw ours.status === 'rejected' ? ours.reason : (theirs as PromiseRejectedResult).reason;
    }
  });

  after(async () => {
    agents.mcr.destroy();
    agents.reference.destroy();
    await Promise.all([mcr?.cleanup(), reference?.stop()]);
  });

  for (const testCase of CASES) {
    it(testCase.name, async (t) => {
      assert.ok(mcr, 'mcr is not running');
      assert.ok(reference, 'the reference registry is not running');
      const repo = repositoryOf(testCase.name);
      const [mcrOutcomes, referenceOutcomes] = await Promise.all([
        runSteps(
          {
            base: new URL(mcr.url),
            agent: agents.mcr,
            // The reference registry runs without authentication, so only mcr gets credentials.
            headers: { authorization: basicAuth(ADMIN_USER, ADMIN_PASSWORD) },
          },
          testCase.steps,
          repo,
        ),
        runSteps({ base: new URL(reference.url), agent: agents.reference }, testCase.steps, repo),
      ]);

      const wheres = testCase.steps.map(
        (step, index) => `${testCase.name}, step ${index + 1} (${step.method} ${step.path})`,
      );
      if (process.env.MCR_DIFF_TRACE) {
        wheres.forEach((where, index) => {
          const mcrOutcome = mcrOutcomes[index] as Outcome;
          const referenceOutcome = referenceOutcomes[index] as Outcome;
          t.diagnostic(
            `${where}\n  mcr:       ${summary(mcrOutcome)}\n  reference: ${summary(referenceOutcome)}`,
          );
        });
      }
      // Every step is compared, so one failure does not hide the others.
      const failures = testCase.steps.flatMap((step, index) =>
        compareStep(
          t,
          wheres[index] as string,
          step,
          mcrOutcomes[index] as Outcome,
          referenceOutcomes[index] as Outcome,
          repo,
        ),
      );
      if (failures.length > 0) assert.fail(failures.join('\n\n'));
    });
  }
});
