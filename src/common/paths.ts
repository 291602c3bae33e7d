import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The checkout ferry runs from (two levels above this file). */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
