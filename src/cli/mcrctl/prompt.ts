import { createInterface } from 'node:readline/promises';

import { CliError, ExitCode, usageError } from './errors.js';

/** Reports whether prompts can be shown: stdin and stderr are both terminals. */
export function isInteractive(): boolean {
  return Boolean(process.stdin.isTTY && process.stderr.isTTY);
}

/** Asks a question on stderr and returns the line typed, without surrounding blanks. */
export async function promptLine(question: string): Promise<string> {
  const readline = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return (await readline.question(question)).trim();
  } finally {
    readline.close();
  }
}

/**
 * Asks for a secret on stderr without echoing it. The terminal is put in raw
 * mode, so Ctrl-C is handled here: it restores the terminal and exits with 130.
 */
export async function promptSecret(question: string): Promise<string> {
  const input = process.stdin;
  process.stderr.write(question);
  input.setRawMode(true);
  input.resume();
  input.setEncoding('utf8');

  return new Promise<string>((resolve) => {
    let secret = '';
    const finish = () => {
      input.removeListener('data', onData);
      input.setRawMode(false);
      input.pause();
      process.stderr.write('\n');
    };
    const onData = (chunk: string) => {
      for (const char of chunk) {
        if (char === '\r' || char === '\n' || char === '\u0004') {
          finish();
          resolve(secret);
          return;
        }
        if (char === '\u0003') {
          finish();
          process.exit(130);
        }
        if (char === '\u007f' || char === '\b') {
          secret = secret.slice(0, -1);
        } else {
          secret += char;
        }
      }
    };
    input.on('data', onData);
  });
}

/** Reads all of stdin and returns it without the final line break, for --password-stdin. */
export async function readStdinSecret(optionName: string): Promise<string> {
  if (process.stdin.isTTY) {
    throw usageError(
      `${optionName} reads the password from standard input, which is a terminal`,
      `pipe the password in, for example: printf '%s' "$PASSWORD" | mcrctl ... ${optionName}`,
    );
  }
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  const secret = Buffer.concat(chunks)
    .toString('utf8')
    .replace(/\r?\n$/, '');
  if (secret === '') throw usageError(`${optionName} got an empty password on standard input`);
  return secret;
}

/**
 * Asks the user to confirm a destructive action, or checks for --yes.
 * Without a terminal no prompt can be shown, so --yes is required.
 * Throws CliError when the user declines.
 */
export async function confirmAction(description: string, yes: boolean | undefined): Promise<void> {
  if (yes) return;
  if (!isInteractive()) {
    throw usageError(
      `refusing to ${description} without confirmation`,
      'pass --yes to confirm when standard input is not a terminal',
    );
  }
  const answer = await promptLine(`Really ${description}? This cannot be undone. [y/N] `);
  if (!/^y(es)?$/i.test(answer)) {
    throw new CliError(ExitCode.failure, `cancelled: did not ${description}`);
  }
}
