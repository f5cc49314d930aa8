import { RegistryError } from './errors.js';

/** Maximum length of a repository name, in characters. */
export const MAX_NAME_LENGTH = 255;

const NAME_PATTERN =
  /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/;

const TAG_PATTERN = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;

/** Throws NAME_INVALID unless the name follows the distribution specification's grammar. */
export function validateRepositoryName(name: string): void {
  if (name.length > MAX_NAME_LENGTH) {
    throw new RegistryError(
      'NAME_INVALID',
      `repository name is ${name.length} characters long; the maximum is ${MAX_NAME_LENGTH}`,
      { detail: { name: name.slice(0, 64) + '...' } },
    );
  }
  if (!NAME_PATTERN.test(name)) {
    throw new RegistryError(
      'NAME_INVALID',
      `invalid repository name "${name}": use lower-case path segments of letters and digits separated by ".", "_", "__" or "-"`,
      { detail: { name } },
    );
  }
}

/** Reports whether a reference is a valid tag (as opposed to a digest). */
export function isTag(reference: string): boolean {
  return TAG_PATTERN.test(reference);
}
