import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

/** ferry's search attributes, registered on the dev server at start (and in docker-compose). */
export const VmId = defineSearchAttributeKey('VmId', SearchAttributeType.KEYWORD);
export const SourceHost = defineSearchAttributeKey('SourceHost', SearchAttributeType.KEYWORD);
export const TargetHost = defineSearchAttributeKey('TargetHost', SearchAttributeType.KEYWORD);
export const Strategy = defineSearchAttributeKey('Strategy', SearchAttributeType.KEYWORD);
export const Phase = defineSearchAttributeKey('Phase', SearchAttributeType.KEYWORD);
export const TicketId = defineSearchAttributeKey('TicketId', SearchAttributeType.KEYWORD);

export const FERRY_SEARCH_ATTRIBUTES = [VmId, SourceHost, TargetHost, Strategy, Phase, TicketId];

/** `--search-attribute` flags for `temporal server start-dev`. */
export function searchAttributeFlags(): string[] {
  return FERRY_SEARCH_ATTRIBUTES.flatMap((k) => ['--search-attribute', `${k.name}=Keyword`]);
}
