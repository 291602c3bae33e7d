/** Queries and updates of the migration workflow (operators' controls). */
import { defineQuery, defineUpdate } from '@temporalio/workflow';
import type { ReportDecision, ReportIteration } from './report';

export type Phase =
  | 'preparing'
  | 'precopy'
  | 'stop-and-copy'
  | 'switching'
  | 'postcopy'
  | 'verifying'
  | 'completed'
  | 'rolling-back'
  | 'rolled-back'
  | 'failed';

export interface Progress {
  id: string;
  vm: string;
  source: string;
  target: string;
  strategy: string;
  phase: Phase;
  /** Reached the point of no return (target running): cancel is refused from here on. */
  switched: boolean;
  iteration: number;
  remainingPages: number;
  pageCount: number;
  bytesSent: number;
  lambdas: number[];
  staticMerged: boolean | null;
  bandwidthBytesPerSec: number;
  etaMs: number | null;
  elapsedMs: number;
  lastDecision: ReportDecision | null;
  iterations: ReportIteration[];
}

export const progressQuery = defineQuery<Progress>('progress');
/** Switch to post-copy at the next iteration boundary. */
export const forcePostcopyUpdate = defineUpdate<{ accepted: true; atIteration: number }, [{ by?: string }]>('forcePostcopy');
/** Change the migration-network cap while the migration runs (bytes/s; 0 = uncapped). */
export const setBandwidthUpdate = defineUpdate<{ bandwidthBytesPerSec: number }, [number]>('setBandwidth');
/** Cancel: roll back before the switch; refused after it. */
export const cancelUpdate = defineUpdate<{ accepted: true }, [{ by?: string; reason?: string }]>('cancel');
