/** A /v2/ request, split into the operation's kind and its parameters. */
export type V2Route =
  | { kind: 'base' }
  | { kind: 'catalog' }
  | { kind: 'tags'; name: string }
  | { kind: 'manifest'; name: string; reference: string }
  | { kind: 'blob'; name: string; digest: string }
  | { kind: 'upload'; name: string; id: string | undefined }
  | { kind: 'referrers'; name: string; digest: string };

// The name part is greedy, so each pattern splits the path on the last
// occurrence of its marker: "a/manifests/b/manifests/latest" is the tag
// "latest" of the repository "a/manifests/b".
const PATTERNS: Array<[RegExp, (m: RegExpExecArray) => V2Route]> = [
  [/^(.+)\/tags\/list$/, (m) => ({ kind: 'tags', name: m[1] as string })],
  [
    /^(.+)\/manifests\/([^/]+)$/,
    (m) => ({ kind: 'manifest', name: m[1] as string, reference: m[2] as string }),
  ],
  [
    /^(.+)\/blobs\/uploads\/([^/]*)$/,
    (m) => ({ kind: 'upload', name: m[1] as string, id: m[2] === '' ? undefined : m[2] }),
  ],
  [
    /^(.+)\/blobs\/([^/]+)$/,
    (m) => ({ kind: 'blob', name: m[1] as string, digest: m[2] as string }),
  ],
  [
    /^(.+)\/referrers\/([^/]+)$/,
    (m) => ({ kind: 'referrers', name: m[1] as string, digest: m[2] as string }),
  ],
];

/**
 * Parses the path of a /v2/ request (without its query string). Returns
 * undefined for a path that names no operation. The last segment is
 * percent-decoded, because some clients encode the ':' of a digest.
 */
export function parseV2Path(pathname: string): V2Route | undefined {
  if (pathname === '/v2' || pathname === '/v2/') return { kind: 'base' };
  if (!pathname.startsWith('/v2/')) return undefined;

  const rest = pathname.slice('/v2/'.length);
  if (rest === '_catalog') return { kind: 'catalog' };

  for (const [pattern, build] of PATTERNS) {
    const match = pattern.exec(rest);
    if (!match) continue;
    const route = build(match);
    return decodeLastSegment(route);
  }
  return undefined;
}

function decodeLastSegment(route: V2Route): V2Route | undefined {
  try {
    switch (route.kind) {
      case 'manifest':
        return { ...route, reference: decodeURIComponent(route.reference) };
      case 'blob':
      case 'referrers':
        return { ...route, digest: decodeURIComponent(route.digest) };
      case 'upload':
        return route.id === undefined ? route : { ...route, id: decodeURIComponent(route.id) };
      default:
        return route;
    }
  } catch {
    return undefined;
  }
}
