import { CliError, ExitCode } from './errors.js';

/** Maximum time for one API request, in milliseconds. */
const REQUEST_TIMEOUT_MS = 30_000;

/** Request credentials: a session token sent as Bearer, or Basic credentials. */
export type Credentials =
  { type: 'bearer'; token: string } | { type: 'basic'; username: string; password: string };

export interface RequestOptions {
  /** Query parameters; undefined values are left out. */
  query?: Record<string, string | number | boolean | undefined>;
  /** JSON request body. */
  body?: unknown;
  /** Sends no Authorization header (health, login). */
  anonymous?: boolean;
  /** Accepts these non-2xx statuses and returns their body instead of throwing. */
  acceptStatus?: number[];
}

export interface ApiResponse<T> {
  status: number;
  body: T;
}

/** The common shape of a paginated /v1 list response. */
export interface Page {
  next_cursor?: string | null;
}

/** Page selection of a list command: one page, or all pages with `all`. */
export interface PageOptions {
  limit?: number;
  cursor?: string;
  all?: boolean;
}

/** Joins path segments, percent-encoding each part but keeping `/` in repository names. */
export function apiPath(...segments: Array<string | number>): string {
  return segments
    .map((segment) => String(segment).split('/').map(encodeURIComponent).join('/'))
    .join('/');
}

/** A client of mcr's admin REST API (/v1). */
export class ApiClient {
  constructor(
    readonly baseUrl: string,
    private readonly credentials: Credentials | undefined,
    private readonly loginHint: string,
  ) {}

  /**
   * Sends a request and returns the parsed JSON body. `action` names the
   * operation in error messages, such as "delete repository team/app".
   * Throws CliError with the exit status that matches the HTTP status.
   */
  async request<T>(
    method: string,
    path: string,
    action: string,
    options: RequestOptions = {},
  ): Promise<ApiResponse<T>> {
    const url = new URL(`${this.baseUrl}${path}`);
    for (const [key, value] of Object.entries(options.query ?? {})) {
      if (value !== undefined) url.searchParams.set(key, String(value));
    }

    const headers: Record<string, string> = { Accept: 'application/json' };
    if (!options.anonymous) {
      if (!this.credentials) {
        throw new CliError(
          ExitCode.unauthenticated,
          `cannot ${action}: not logged in to ${this.baseUrl}`,
          this.loginHint,
        );
      }
      headers.Authorization = authorizationHeader(this.credentials);
    }
    if (options.body !== undefined) headers['Content-Type'] = 'application/json';

    let response: Response;
    try {
      response = await fetch(url, {
        method,
        headers,
        body: options.body === undefined ? undefined : JSON.stringify(options.body),
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
        redirect: 'manual',
      });
    } catch (error) {
      throw unreachableError(this.baseUrl, action, error);
    }

    const text = await response.text();
    const body = parseBody(text);
    if (response.ok || options.acceptStatus?.includes(response.status)) {
      return { status: response.status, body: body as T };
    }
    if (response.status >= 300 && response.status < 400) {
      throw new CliError(
        ExitCode.failure,
        `cannot ${action}: the server redirected to ${response.headers.get('location') ?? 'another address'}`,
        'use the URL the server redirects to (for example https:// instead of http://)',
      );
    }
    throw this.httpError(method, url, action, response.status, body, text);
  }

  /**
   * Sends a request whose response is newline-delimited JSON and calls
   * `onLine` with each parsed line as it arrives.
   */
  async stream(
    method: string,
    path: string,
    action: string,
    body: unknown,
    onLine: (line: Record<string, unknown>) => void,
  ): Promise<void> {
    if (!this.credentials) {
      throw new CliError(
        ExitCode.unauthenticated,
        `cannot ${action}: not logged in to ${this.baseUrl}`,
        this.loginHint,
      );
    }
    const url = new URL(`${this.baseUrl}${path}`);
    let response: Response;
    try {
      response = await fetch(url, {
        method,
        headers: {
          Accept: 'application/x-ndjson',
          Authorization: authorizationHeader(this.credentials),
          'Content-Type': 'application/json',
        },
        body: JSON.stringify(body),
        redirect: 'manual',
      });
    } catch (error) {
      throw unreachableError(this.baseUrl, action, error);
    }
    if (!response.ok || !response.body) {
      const text = await response.text();
      throw this.httpError(method, url, action, response.status, parseBody(text), text);
    }

    let buffered = '';
    const decoder = new TextDecoder();
    for await (const chunk of response.body) {
      buffered += decoder.decode(chunk as Uint8Array, { stream: true });
      let newline = buffered.indexOf('\n');
      while (newline !== -1) {
        const line = buffered.slice(0, newline).trim();
        buffered = buffered.slice(newline + 1);
        if (line !== '') onLine(JSON.parse(line) as Record<string, unknown>);
        newline = buffered.indexOf('\n');
      }
    }
    if (buffered.trim() !== '') onLine(JSON.parse(buffered) as Record<string, unknown>);
  }

  /**
   * Fetches one page of a list, or every page when `page.all` is set, and
   * returns the items under `key` with the last `next_cursor`.
   */
  async list<T>(
    path: string,
    key: string,
    action: string,
    page: PageOptions,
    query: RequestOptions['query'] = {},
  ): Promise<{ items: T[]; next_cursor: string | null }> {
    const items: T[] = [];
    const seenCursors = new Set<string>();
    let cursor = page.cursor;
    for (;;) {
      const { body } = await this.request<Page & Record<string, unknown>>('GET', path, action, {
        query: { ...query, limit: page.limit, cursor },
      });
      const pageItems = body[key];
      if (!Array.isArray(pageItems)) {
        throw new CliError(
          ExitCode.failure,
          `cannot ${action}: the server's response has no "${key}" list`,
          'check that the server runs a compatible mcr version',
        );
      }
      items.push(...(pageItems as T[]));
      const next = typeof body.next_cursor === 'string' ? body.next_cursor : null;
      if (!page.all || next === null) return { items, next_cursor: next };
      if (seenCursors.has(next)) {
        throw new CliError(
          ExitCode.failure,
          `cannot ${action}: the server returned cursor ${JSON.stringify(next)} twice`,
          'report this as a server bug; fetch pages one by one with --cursor meanwhile',
        );
      }
      seenCursors.add(next);
      cursor = next;
    }
  }

  private httpError(
    method: string,
    url: URL,
    action: string,
    status: number,
    body: unknown,
    text: string,
  ): CliError {
    const serverMessage = errorMessage(body, text, status);
    const message = `cannot ${action}: ${serverMessage}`;

    // A route the server lacks also returns 404, either with mcr's
    // "no endpoint at ..." or with an OCI-style error list. That is a version
    // mismatch, not a missing object, so it gets the generic exit status.
    const routeMissing =
      status === 404 && (serverMessage.startsWith('no endpoint at') || !isApiErrorBody(body));
    if (routeMissing) {
      return new CliError(
        ExitCode.failure,
        `cannot ${action}: the server at ${this.baseUrl} has no ${method} ${url.pathname} endpoint (${serverMessage})`,
        'check that the URL points at mcr and that the server is a version with this admin API',
      );
    }

    switch (status) {
      case 400:
        return new CliError(ExitCode.usage, message);
      case 401:
        return new CliError(ExitCode.unauthenticated, message, this.loginHint);
      case 403:
        return new CliError(
          ExitCode.forbidden,
          message,
          'this needs an administrator account, or a token with the admin scope',
        );
      case 404:
        return new CliError(ExitCode.notFound, message);
      case 409:
      case 412:
        return new CliError(ExitCode.conflict, message);
      case 429:
        return new CliError(ExitCode.failure, message, 'wait a while and try again');
      default:
        return new CliError(
          ExitCode.failure,
          `${message} (HTTP ${status})`,
          status >= 500 ? 'check the registry log for details' : undefined,
        );
    }
  }
}

function authorizationHeader(credentials: Credentials): string {
  if (credentials.type === 'bearer') return `Bearer ${credentials.token}`;
  const pair = `${credentials.username}:${credentials.password}`;
  return `Basic ${Buffer.from(pair, 'utf8').toString('base64')}`;
}

function parseBody(text: string): unknown {
  if (text === '') return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function isApiErrorBody(body: unknown): body is { error: string } {
  return (
    typeof body === 'object' &&
    body !== null &&
    typeof (body as { error?: unknown }).error === 'string'
  );
}

/** Extracts the server's error message from `{"error": ...}`, an OCI error list, or the raw text. */
function errorMessage(body: unknown, text: string, status: number): string {
  if (isApiErrorBody(body)) return body.error;
  const errors = (body as { errors?: Array<{ message?: unknown }> } | undefined)?.errors;
  const first = Array.isArray(errors) ? errors[0]?.message : undefined;
  if (typeof first === 'string' && first !== '') return first;
  const trimmed = text.trim().slice(0, 200);
  return trimmed === '' ? `HTTP ${status}` : trimmed;
}

function unreachableError(baseUrl: string, action: string, error: unknown): CliError {
  const hint = 'check the URL and that the server is running';
  if (error instanceof DOMException && error.name === 'TimeoutError') {
    return new CliError(
      ExitCode.unreachable,
      `cannot ${action}: ${baseUrl} did not respond within ${REQUEST_TIMEOUT_MS / 1000} s`,
      hint,
    );
  }
  // undici reports network failures as TypeError("fetch failed") with the
  // system error (ECONNREFUSED, ENOTFOUND, ...) as its cause.
  const cause = (error as { cause?: { message?: string; code?: string } }).cause;
  const detail = cause?.message ?? (error as Error).message;
  return new CliError(
    ExitCode.unreachable,
    `cannot ${action}: cannot reach ${baseUrl}: ${detail}`,
    hint,
  );
}
